"""steerlib-report: the HTML page on a stand-in model (tests/stand_ins.py) and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stand_ins import save_stand_in

from steerlib import report
from steerlib.judge import JudgeResult
from steerlib.models import load_model
from steerlib.vectors import SteeringVector


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    folder = save_stand_in("qwen3", tmp_path_factory.mktemp("stand_in") / "qwen3")
    lm = load_model(str(folder), device="cpu", dtype="float32")
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    path = SteeringVector(v, lm.name, 2, "joy", "random", 4, 4).save(folder.parent / "joy.safetensors")
    return folder, lm, path


def letter_judge(texts, concept):
    """Present when the text holds the letter 'e' (a stand-in judge)."""
    labels = np.array([int("e" in t) for t in texts])
    return JudgeResult(labels, labels - 0.5)


def test_build_report_shows_the_choice_the_curves_and_completions(stand_in):
    _, lm, path = stand_in
    vector = SteeringVector.load(path)
    page = report.build_report(lm, vector, ["Hello there", "I think"], budget=0.5, alphas=np.linspace(0, 20, 11),
                               judge=letter_judge, n_samples=2, max_new_tokens=4, corpus_tokens=64)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "Recommended α = " in page and "concept probability" in page.lower() and "ΔCE" in page
    assert page.count("data:image/png;base64,") == 2
    assert "Hello there" in page and "judged by letter_judge" in page


def test_command_writes_the_page(stand_in, tmp_path, capsys):
    folder, _, path = stand_in
    out = tmp_path / "page.html"
    code = report.main(["--model", str(folder), "--vector", str(path), "--prompt", "Hello", "--judge", "none",
                        "--n-samples", "1", "--max-new-tokens", "3", "--alpha-max", "10", "--dtype", "float32",
                        "--out", str(out)])
    assert code == 0 and out.exists() and "not judged" in out.read_text()
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--budget", "0"], "budget"),
    (["--budget", "-2"], "budget"),
    (["--prompt", " "], "non-empty string"),
    (["--n-samples", "0"], "at least 1"),
])
def test_errors_before_any_work(stand_in, tmp_path, capsys, extra, message):
    folder, _, path = stand_in
    code = report.main(["--model", str(folder), "--vector", str(path), "--out", str(tmp_path / "x.html"), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_errors_for_the_vector(stand_in, tmp_path, capsys):
    folder, lm, _ = stand_in
    other = SteeringVector(torch.ones(lm.hidden_size), "another-model", 1, "joy", "random", 4, 4)
    path = other.save(tmp_path / "other.safetensors")
    assert report.main(["--model", str(folder), "--vector", str(path), "--out", str(tmp_path / "x.html")]) == 2
    assert "computed on 'another-model'" in capsys.readouterr().err
    assert report.main(["--model", str(folder), "--vector", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert report.main(["--model", str(folder), "--concept", "joy"]) == 2
    assert "--layer" in capsys.readouterr().err


def synthetic_truth(concept: str = "joy", layer: int = 1):
    from steerlib.choose import GroundTruth

    alphas = np.linspace(0, 8, 5)
    labels = np.zeros((5, 3, 2), dtype=int)
    labels[2:4] = 1
    kl = np.tile(alphas ** 2 / 8, (3, 1))
    return GroundTruth(alphas, labels, alphas / 4, alphas, kl, np.ones_like(kl) * 2,
                       [[f" text {a}" for _ in range(3)] for a in alphas], ["a", "b", "c"],
                       {"concept": concept, "layer": layer, "model": "m"})


def test_validation_figure_and_animation():
    import matplotlib.pyplot as plt

    from steerlib import choose

    truths = [synthetic_truth("joy"), synthetic_truth("evil")]
    rows = choose.regret_rows(truths, budget=2.0, collapse=1.0)
    ax = report.plot_validation_curves(truths, rows, 1)
    assert len(ax.lines) == 4 and ax.get_legend() is not None
    plt.close("all")
    page = report.animate_validation(truths, budget=2.0, collapse=1.0, prompts_per_truth=2)
    assert "<script" in page and "font-awesome" not in page and "▶" in page
    with pytest.raises(ValueError, match="no ground truth"):
        report.animate_validation([])


def test_live_explorer_redraws_what_is_picked(monkeypatch):
    """The ipywidgets explorer lists each truth's prompts and redraws the frame of the (truth, prompt, budget)
    picked: the rule's α in the drawn title follows the budget."""
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    truths = [synthetic_truth("joy"), synthetic_truth("evil")]
    drawn = []
    monkeypatch.setattr(plt, "show", lambda: drawn.append(plt.gcf().axes[1].get_title()) or plt.close("all"))
    box = report.explore_validation(truths, budget=2.0, collapse=1.0)
    pair, prompt, budget = box.children[0].children
    assert [label for label, _ in pair.options] == ["joy, block 1", "evil, block 1"]
    assert [label for label, _ in prompt.options] == ["a", "b", "c"]
    pair.value = 1
    prompt.value = 2
    budget.value = 8.0
    assert drawn[0].startswith("joy, block 1") and drawn[-1].startswith("evil, block 1")
    assert drawn[-1] != drawn[-2]  # a larger budget moves the rule's α
    with pytest.raises(ValueError, match="no ground truth"):
        report.explore_validation([])
    with pytest.raises(ValueError, match="budget"):
        report.explore_validation(truths, budget=-1.0)

def test_ufm_sweet_spot_figure_shades_the_interval():
    import matplotlib.pyplot as plt

    from steerlib import ufm

    data = ufm.eq2_dataset()
    M = data.log_odds(ufm.eq2_steering_sets(data))
    ax = report.plot_ufm_sweet_spot(data.rows[data.context_index("ABB")], M, data.members(0), np.linspace(0, 3, 61),
                                    data.token_names, budget_alpha=0.5)
    lo, hi = ufm.sweet_spot(data.rows[data.context_index("ABB")], M, data.members(0))
    shaded = ax.patches[-1]
    assert np.isclose(shaded.get_x(), lo) and np.isclose(shaded.get_x() + shaded.get_width(), hi)
    plt.close("all")
