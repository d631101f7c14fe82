"""The results store: data paths, wheel files, atomic writes, content keys, Result round trips, load-or-compute."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from steerlib.store import Result, atomic_write, content_key, data_path, load_or_compute, wheel_file
from steerlib.vectors import SteeringVector


@dataclass
class Curve(Result):
    alphas: np.ndarray
    values: np.ndarray
    tokens: list
    parameters: dict


@dataclass
class Partial(Result):
    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.done == self.total


def curve() -> Curve:
    return Curve(np.linspace(-1, 1, 5), np.arange(10.0).reshape(5, 2), [" the", "\n", "é"], {"model": "m", "k": [1, 2]})


def test_data_path_finds_shipped_files_and_names_missing_ones():
    assert data_path("eval_prompts.json").is_file()
    with pytest.raises(ValueError, match="no-such-file.txt"):
        data_path("no-such-file.txt")


def test_wheel_file_says_what_to_install():
    with pytest.raises(ValueError, match="pip install --no-deps no-such-wheel"):
        wheel_file("no_such_wheel", "x")
    with pytest.raises(ValueError, match="has no missing.txt"):
        wheel_file("steerlib", "missing.txt")
    with pytest.raises(ValueError, match="`pip install gensim`"):
        wheel_file("no_such_package", "x", wheel="gensim", no_deps=False)


def test_a_result_round_trips_every_field(tmp_path):
    original = curve()
    loaded = Curve.load(original.save(tmp_path / "curve.npz"))
    np.testing.assert_array_equal(loaded.alphas, original.alphas)
    np.testing.assert_array_equal(loaded.values, original.values)
    assert loaded.tokens == original.tokens and loaded.parameters == original.parameters
    assert [path.name for path in tmp_path.iterdir()] == ["curve.npz"]  # no temporary left behind


def test_a_result_refuses_another_type_a_missing_file_and_a_corrupt_one(tmp_path):
    path = curve().save(tmp_path / "curve.npz")
    with pytest.raises(ValueError, match="holds a Curve, not a Partial"):
        Partial.load(path)
    with pytest.raises(ValueError, match="no saved Curve"):
        Curve.load(tmp_path / "missing.npz")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a saved Curve.*delete it"):
        Curve.load(path)


def test_atomic_write_replaces_files_and_folders(tmp_path):
    target = tmp_path / "sub" / "x.json"
    atomic_write(target, lambda tmp: tmp.write_text("1"))
    atomic_write(target, lambda tmp: tmp.write_text("2"))
    assert target.read_text() == "2"
    folder = tmp_path / "model"

    def write_folder(tmp):
        tmp.mkdir()
        (tmp / "weights").write_text("w")

    atomic_write(folder, write_folder)
    atomic_write(folder, write_folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "sub"]

    def crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "2"  # a killed write leaves the last complete file


def test_content_keys_follow_values_not_identity():
    v = SteeringVector(torch.ones(4), "m", 1, "joy", "random", 2, 2)
    same = SteeringVector(torch.ones(4), "m", 1, "joy", "random", 2, 2)
    other = SteeringVector(torch.ones(4) * 1.001, "m", 1, "joy", "random", 2, 2)
    assert content_key("m", v, {"a": [1, 2]}) == content_key("m", same, {"a": (1, 2)})
    assert content_key("m", v) != content_key("m", other)
    assert content_key("m", v) != content_key("m", SteeringVector(torch.ones(4), "m", 2, "joy", "random", 2, 2))
    assert content_key(np.arange(3)) != content_key(np.arange(4))
    assert len(content_key("x")) == 16


def test_load_or_compute_computes_once_and_resumes_partial_results(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return curve()

    first = load_or_compute(tmp_path / "c.npz", compute, Curve)
    second = load_or_compute(tmp_path / "c.npz", compute, Curve)
    assert len(calls) == 1 and second.tokens == first.tokens
    Partial(3, 10).save(tmp_path / "p.npz")
    finished = load_or_compute(tmp_path / "p.npz", lambda: Partial(10, 10), Partial)
    assert finished.done == 10 and Partial.load(tmp_path / "p.npz").complete
