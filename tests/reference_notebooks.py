"""Executed reference notebooks: the chapters as ``.ipynb`` beside their MyST sources.

nbval re-executes these notebooks and compares the cells tagged ``nbval-check-output`` (the check
tables) with the outputs stored here, so a change in steerlib that moves a printed number fails the
tests. The same files are what the Colab launch buttons open (Colab cannot open ``.md`` notebooks).

    python tests/reference_notebooks.py                 # regenerate every chapter's notebook
    python tests/reference_notebooks.py book/theory/ufm_dataset.md   # only these chapters
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import yaml
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
# Progress bars are kept out of the stored outputs.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _toc_files(entries) -> list[str]:
    files = []
    for entry in entries:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("chapters", "sections", "parts"):
            files.extend(_toc_files(entry.get(key, [])))
    return files


def chapter_sources() -> list[Path]:
    """The MyST notebooks listed in ``_toc.yml`` (pages without a kernelspec are plain text, not notebooks)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]] + _toc_files(toc.get("parts", []) + toc.get("chapters", []))
    sources = [REPO / f"{name}.md" for name in files]
    return [path for path in sources if "kernelspec" in jupytext.read(path).metadata]


def reference_path(source: Path) -> Path:
    return source.with_suffix(".ipynb")


def code_cells(notebook) -> list[tuple[str, list[str]]]:
    """(source, tags) of every code cell: what must be equal between a chapter and its reference."""
    return [(cell.source.strip(), sorted(cell.metadata.get("tags", [])))
            for cell in notebook.cells if cell.cell_type == "code"]


def execute(source: Path, timeout: int = 1800) -> Path:
    """Execute one chapter in its own folder and write its reference notebook."""
    notebook = jupytext.read(source)
    os.environ.update(QUIET_ENV)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    target = reference_path(source)
    tmp = target.with_suffix(".ipynb.tmp")
    nbformat.write(notebook, tmp)
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter .md files (default: all in _toc.yml)")
    args = parser.parse_args(argv)
    sources = [path.resolve() for path in args.chapters] or chapter_sources()
    for source in sources:
        start = time.perf_counter()
        target = execute(source)
        print(f"{target.relative_to(REPO)}  {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
