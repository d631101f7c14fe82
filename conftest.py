"""pytest configuration of the whole repository: how nbval holds the chapters' check tables fixed.

``make test`` runs nbval over the executed reference notebooks ``book/<part>/<chapter>.ipynb`` with
``--nbval-lax``: every cell must run without error, and the cells tagged ``nbval-check-output`` (the check
tables) must reproduce the stored outputs. A check table's output carries a machine-readable record
(:data:`steerlib.checks.RECORD_MIME`); this plugin replaces nbval's text comparison of those cells by
:func:`steerlib.checks.compare_records`: claims and verdicts exactly, numbers within each row's stated
reproducibility. Printed digits are never compared, so a number near a rounding boundary cannot flip the test.

Options:
    --torch-threads N        run PyTorch with N threads, in the tests and inside the notebook kernels
                             (sets STEERLIB_TORCH_THREADS, which steerlib applies when imported)
    --save-check-records D   write each re-executed check record to D/<part>-<chapter>.json (to compare machines)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import MethodType

from steerlib.checks import RECORD_MIME, compare_records


def pytest_addoption(parser):
    group = parser.getgroup("steerlib")
    group.addoption("--torch-threads", type=int, default=None,
                    help="PyTorch threads in the tests and in the notebook kernels (default: PyTorch's own choice)")
    group.addoption("--save-check-records", default=None, metavar="DIR",
                    help="write the check records measured by nbval to DIR/<part>-<chapter>.json")


def pytest_configure(config):
    threads = config.getoption("--torch-threads")
    if threads is not None:
        os.environ["STEERLIB_TORCH_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _records(outputs) -> list[dict]:
    return [output["data"][RECORD_MIME] for output in outputs
            if output.get("output_type") in ("display_data", "execute_result") and RECORD_MIME in output.get("data", {})]


def _compare_check_outputs(item, test_outputs, stored_outputs, skip_compare=None) -> bool:
    """nbval's ``compare_outputs`` for a check cell: the records, compared by :func:`compare_records`."""
    stored, fresh = _records(stored_outputs), _records(test_outputs)
    folder = item.config.getoption("--save-check-records")
    if folder:
        notebook = Path(str(item.fspath)).resolve()
        path = Path(folder) / f"{notebook.parent.name}-{notebook.stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fresh, indent=1, ensure_ascii=False))
    item.comparison_traceback = []
    if not stored:
        item.comparison_traceback.append("the stored notebook has no check record: regenerate it with "
                                         "`make notebooks` (or python tests/reference_notebooks.py <chapter>.md)")
        return False
    if len(stored) != len(fresh):
        item.comparison_traceback.append(f"{len(stored)} check tables stored, {len(fresh)} displayed now")
        return False
    for old, new in zip(stored, fresh):
        item.comparison_traceback.extend(compare_records(old, new))
    return not item.comparison_traceback


def pytest_collection_modifyitems(items):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return
    for item in items:
        if isinstance(item, IPyNbCell) and item.options.get("check") and \
                "nbval-check-output" in item.cell.metadata.get("tags", []):
            item.compare_outputs = MethodType(_compare_check_outputs, item)
