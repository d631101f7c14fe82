"""The project keeps itself in step: environment.yml vs pyproject, chapters vs reference notebooks, Colab install
cells vs chapter imports, parameters cells papermill can read."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

import jupytext
import nbformat
import papermill
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from reference_notebooks import REPO, chapter_sources, code_cells, reference_path

COLAB_MARKER = "google.colab"


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _environment():
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [item for item in environment["dependencies"] if isinstance(item, str)]
    pip = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    return conda, pip


def test_environment_yml_lists_exactly_the_pyproject_requirements():
    """PyTorch comes from conda-forge (``pytorch``, which picks a CPU or CUDA build), everything else from pip."""
    project = _pyproject()["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    conda, pip = _environment()
    listed = set(pip) | {"torch" + item[len("pytorch"):] for item in conda if item.startswith("pytorch")}
    assert listed == wanted, ("environment.yml and pyproject.toml disagree: "
                              f"only in environment.yml {sorted(listed - wanted)}, "
                              f"only in pyproject.toml {sorted(wanted - listed)}")
    assert not any(item.startswith("torch") for item in pip), "torch from pip would pull the CUDA wheels"


def test_environment_python_satisfies_requires_python():
    conda, _ = _environment()
    python = next(item for item in conda if item.startswith("python"))
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


def _install_cell_requirements(source: str) -> list[Requirement]:
    """What a chapter's install cell asks pip for: the words after ``install`` in each command list, the
    f-string ``f"steerlib[notebook] @ {source}"`` read as the name and extras before ``@``."""
    requirements = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.List):
            continue
        words = []
        for element in node.elts:
            if isinstance(element, ast.Constant) and isinstance(element.value, str):
                words.append(element.value)
            elif isinstance(element, ast.JoinedStr) and isinstance(element.values[0], ast.Constant):
                words.append(element.values[0].value.split("@")[0].strip())
        if "install" in words:
            requirements += [Requirement(word) for word in words[words.index("install") + 1:]
                             if not word.startswith("-")]
    return requirements


def _distribution_closure(requirements: list[Requirement]) -> set[str]:
    """The distributions pip installs for ``requirements``: steerlib's own from pyproject.toml, others from the
    installed metadata, recursively (the ``--no-deps`` wheels of the install cells have no requirements)."""
    seen: set[str] = set()
    pending = list(requirements)
    project = _pyproject()["project"]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        if name == "steerlib":
            declared = list(project["dependencies"])
            for extra in requirement.extras:
                declared += project["optional-dependencies"][extra]
            pending += [Requirement(text) for text in declared]
            continue
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            child = Requirement(text)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append(child)
    return seen


def _imported_modules(notebook) -> set[str]:
    modules = set()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names)


def missing_imports(notebook) -> set[str]:
    """Modules a chapter imports that its install cell (the first code cell) does not install."""
    install = next(cell for cell in notebook.cells if cell.cell_type == "code").source
    distributions = _distribution_closure(_install_cell_requirements(install))
    provided = {module for module, owners in importlib.metadata.packages_distributions().items()
                if any(canonicalize_name(owner) in distributions for owner in owners)}
    return _imported_modules(notebook) - provided - {"steerlib"}


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_install_cell_provides_every_module_the_chapter_imports(source):
    assert missing_imports(jupytext.read(source)) == set(), (
        "on Colab this chapter would stop with ModuleNotFoundError: add the module's distribution to the "
        "'notebook' extra of pyproject.toml (or to the chapter's install cell)")


def test_an_import_the_install_cell_does_not_provide_is_found():
    notebook = jupytext.read(CHAPTERS[0])
    notebook.cells.append(nbformat.v4.new_code_cell("import nbval\nfrom hypothesis import given"))
    assert missing_imports(notebook) == {"nbval", "hypothesis"}


def _assigned_names(source: str) -> list[str]:
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign):
            names.append(node.target.id)
        elif isinstance(node, ast.Assign):
            names += [target.id for target in node.targets]
    return names


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: str(p.relative_to(REPO)))
def test_papermill_reads_every_parameter_with_its_type(source, tmp_path):
    notebook = jupytext.read(source)
    path = tmp_path / "chapter.ipynb"
    nbformat.write(notebook, path)
    found = papermill.inspect_notebook(str(path))
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assigned = _assigned_names(cell.source)
    assert list(found) == assigned, "papermill skips a parameter line (a comment with '=' hides it)"
    untyped = [name for name, parameter in found.items() if parameter["inferred_type_name"] == "None"]
    assert not untyped, f"annotate {untyped} (name: type = default) so that papermill --help-notebook shows a type"
