"""The results store: data paths, wheel files, atomic writes, content keys, Result round trips, load-or-compute,
and what it does with damaged files, results of other code, read-only folders and concurrent processes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from damage import DAMAGE, damage, unwritable_folder
from steerlib.store import (Result, atomic_write, check_writable, code_version, content_key, data_path,
                            folder_problem, load_or_compute, seal_folder, wheel_file)
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


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_result_is_set_aside_and_computed_again(tmp_path, how):
    path = curve().save(tmp_path / "c.npz")
    damage(path, how)
    with pytest.raises(ValueError, match="not a saved Curve"):
        Curve.load(path)
    with pytest.warns(UserWarning, match=r"c\.npz cannot be used.*moved to c\.npz\.\S+\.unusable and computed again"):
        healed = load_or_compute(path, curve, Curve)
    np.testing.assert_array_equal(healed.values, curve().values)
    np.testing.assert_array_equal(Curve.load(path).values, curve().values)
    assert len(list(tmp_path.glob("c.npz.*.unusable"))) == 1


def test_an_altered_array_fails_its_checksum(tmp_path):
    path = curve().save(tmp_path / "c.npz")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["values"] = arrays["values"] + 1.0
    np.savez(path, **arrays)  # a readable file whose numbers changed after it was written
    with pytest.raises(ValueError, match="checksum"):
        Curve.load(path)


def test_a_result_of_other_code_is_said_and_recomputed_unless_asked(tmp_path):
    old = curve()
    old._computed_by = "0123456789abcdef"
    path = old.save(tmp_path / "c.npz")
    assert Curve.load(path).computed_by == "0123456789abcdef" and curve().computed_by == code_version()
    kept = load_or_compute(path, lambda: pytest.fail("recomputed"), Curve, reuse_other_versions=True)
    assert kept.computed_by == "0123456789abcdef"
    with pytest.warns(UserWarning, match="another version of steerlib .code 0123456789abcdef"):
        fresh = load_or_compute(path, curve, Curve)
    assert fresh.computed_by == code_version() == Curve.load(path).computed_by


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path):
    folder = unwritable_folder(tmp_path)
    with pytest.raises(ValueError, match=f"cannot write results to {folder}.*choose another output folder"):
        load_or_compute(folder / "c.npz", lambda: pytest.fail("computed before checking the folder"), Curve)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="cannot write results"):
        check_writable(a_file / "results")
    assert check_writable(tmp_path / "new" / "folder").is_dir()


@pytest.mark.parametrize("how", DAMAGE + ("removed",))
def test_a_sealed_folder_names_what_changed(tmp_path, how):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "config.json").write_text("{}")
    assert folder_problem(folder) == "it was never completed (no manifest)"
    seal_folder(folder)
    assert folder_problem(folder) is None
    assert (folder / "weights.bin").stat().st_mode & 0o777 == 0o644  # readable by every user of a shared cache
    if how == "removed":
        (folder / "weights.bin").unlink()
        assert folder_problem(folder) == "weights.bin is missing"
    else:
        damage(folder / "weights.bin", how)
        assert folder_problem(folder) == "weights.bin was altered (its checksum does not match)"


_RACE = """
import sys, time
from dataclasses import dataclass
import numpy as np
from steerlib.store import Result, load_or_compute

@dataclass
class Slow(Result):
    values: np.ndarray

def compute():
    with open(sys.argv[2], "a") as log:
        log.write("computed\\n")
    time.sleep(1.0)
    return Slow(np.arange(1000.0))

print(load_or_compute(sys.argv[1], compute, Slow).values.sum())
"""


def test_processes_asking_for_one_result_together_compute_it_once(tmp_path):
    """Three processes started at once on an empty store: all succeed with the same result, computed once."""
    script, log = tmp_path / "race.py", tmp_path / "computed.log"
    script.write_text(_RACE)
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "slow.npz"), str(log)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(np.arange(1000.0).sum())}
    assert log.read_text().count("computed") == 1
