"""The experiment chapters form a grid: one parameter set (names and forms) drives all of them, and each runs on
stand-ins of other architectures (GPT-2, Qwen 3, Gemma 3: tests/stand_ins.py) with one block, through the runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from stand_ins import FAMILIES, save_stand_in
from steerlib.runs import chapter_parameters, collect, grid_jobs, run_grid

BOOK = Path(__file__).resolve().parents[1] / "book"
EXPERIMENT_CHAPTERS = ("transformers/large_alpha_limit", "llm/steering_vectors", "llm/next_token_curves",
                       "llm/log_odds", "llm/concept_probability", "llm/cross_entropy", "llm/mmlu")
# name -> the annotation papermill reads; README ("Running the paper's grid") says what each means.
SHARED_PARAMETERS = {
    "seed": "int", "model": "Optional[str]", "device": "Optional[str]", "dtype": "Optional[str]",
    "concepts": "list[str]", "n_texts": "int", "layers": "Optional[list]", "alpha_max": "float", "n_alphas": "int",
    "alpha_spacing": "str", "alpha_min": "Optional[float]", "alpha_batch": "Optional[int]",
    "activations_dir": "str", "output_dir": "str",
}
# The smallest sizes of each chapter's own knobs: a job takes seconds on a 4-block stand-in.
SMALL = {
    "transformers/large_alpha_limit": {"n_alphas": 3, "ce_n_alphas": 3, "n_prompts": 2},
    "llm/steering_vectors": {"n_alphas": 4, "top_k": 3},
    "llm/next_token_curves": {"n_alphas": 4, "top_k": 3, "n_resamples": 2, "resample_concept": "evil"},
    "llm/log_odds": {"n_alphas": 4, "top_k": 3},
    "llm/concept_probability": {"n_alphas": 2, "n_prompts": 2, "n_samples": 2, "max_new_tokens": 8,
                                "compare_judges": False},
    "llm/cross_entropy": {"n_alphas": 4, "n_tokens": 64, "block_length": 32},
    "llm/mmlu": {"n_alphas": 2, "n_questions": 4},
}


def chapter(name: str) -> str:
    return str(BOOK / f"{name}.md")


@pytest.mark.parametrize("name", EXPERIMENT_CHAPTERS)
def test_every_experiment_chapter_declares_the_shared_parameters(name):
    declared = chapter_parameters(chapter(name))
    missing = sorted(set(SHARED_PARAMETERS) - set(declared))
    assert not missing, f"{name} lacks the shared parameters {missing}"
    forms = {parameter: declared[parameter]["type"] for parameter in SHARED_PARAMETERS}
    assert forms == SHARED_PARAMETERS
    assert declared["layers"]["default"] == "None" and declared["model"]["default"] == "None"


def test_one_grid_of_shared_parameters_drives_every_experiment_chapter():
    grid = {"model": [None, "gpt2"], "layers": [["early"], [1]], "alpha_max": [4.0], "dtype": ["bfloat16"]}
    jobs = grid_jobs([chapter(name) for name in EXPERIMENT_CHAPTERS], grid)
    assert len(jobs) == 4 * len(EXPERIMENT_CHAPTERS)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stand_ins")
    return {family: str(save_stand_in(family, folder / family)) for family in FAMILIES}


@pytest.mark.parametrize("index, name", enumerate(EXPERIMENT_CHAPTERS))
def test_each_experiment_chapter_runs_on_a_stand_in_with_one_block(index, name, stand_ins, tmp_path):
    """Chapter k runs on family k mod 3, so each family runs two or three chapters (the note has all 21 pairs)."""
    family = FAMILIES[index % len(FAMILIES)]
    settings = {"model": stand_ins[family], "layers": [1], "n_texts": 4, "concepts": ["evil"], **SMALL[name]}
    jobs = grid_jobs([chapter(name)], {key: [value] for key, value in settings.items()})
    outcomes = run_grid(jobs, tmp_path, progress=False)
    failed = jobs[0].folder(tmp_path) / "failed.json"
    assert outcomes.get("done") == jobs, failed.read_text() if failed.exists() else outcomes
    assert len(collect(tmp_path)) > 0
