"""Chapters run over a grid of parameters: ``steerlib-run``, resumable, with one table of every check at the end.

A *job* is one chapter (MyST markdown, converted with jupytext, or an ``.ipynb``) executed by papermill with one
parameter set. Each job has its own folder under the run's output folder, named by the chapter and its parameters::

    <out>/<chapter>/<parameters>-<key>/
        job.json          the chapter and its parameters
        <chapter>.ipynb   the chapter converted from MyST (jupytext), as papermill reads it
        executed.ipynb    the executed notebook
        results/          the chapter's output_dir (when the chapter has that parameter)
        done.json         written last: the job finished; its check tables' records and its time
        failed.json       the job failed: its traceback (the next run tries it again)
    <out>/activations/    the activations_dir shared by every job (its files are keyed by model, dtype and texts)

A job whose ``done.json`` exists is skipped, so a run that was killed and started again redoes no finished job; a
failed job does not stop the others; a lock per job folder (``filelock``) lets two runners share one output folder
without running a job twice. :func:`collect` gathers every finished job's check rows into one pandas table with
the job's parameters as columns.

Example (the command line does the same: ``steerlib-run --help``)::

    >>> jobs = grid_jobs(["book/llm/mmlu.md"], {"concept": ["evil", "joy"], "seed": [0, 1]})
    >>> run_grid(jobs, "runs")
    >>> collect("runs").to_csv("runs/checks.csv")
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Mapping, Sequence

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from steerlib.checks import notebook_records, record_rows
from steerlib.store import atomic_write, check_writable, content_key

DONE, FAILED, JOB = "done.json", "failed.json", "job.json"
SHARED_PARAMETERS = {"activations_dir": "activations", "results_dir": "results"}
"""Chapter parameters that every job of a run points at one folder under the output folder (unless set): the
activation cache, and the grid chapter's results, which its jobs (one per concept) write and read together."""


def _as_ipynb(chapter: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """The chapter as a notebook file papermill reads: an ``.ipynb`` as it is, a MyST ``.md`` converted by jupytext
    into ``folder``."""
    import jupytext

    chapter = Path(chapter)
    if not chapter.is_file():
        raise ValueError(f"no chapter at {chapter}: give the path of a chapter's .md (or .ipynb) file.")
    if chapter.suffix == ".ipynb":
        return chapter
    path = Path(folder) / f"{chapter.stem}.ipynb"
    jupytext.write(jupytext.read(chapter), path)
    return path


def _declared(notebook: Path) -> dict[str, dict]:
    import papermill

    found = papermill.inspect_notebook(str(notebook))
    return {name: {"type": info["inferred_type_name"], "default": info["default"]} for name, info in found.items()}


def chapter_parameters(chapter: str | os.PathLike) -> dict[str, dict]:
    """The parameters a chapter declares (papermill's reading of its ``parameters`` cell): name -> type, default."""
    with tempfile.TemporaryDirectory() as folder:
        return _declared(_as_ipynb(chapter, folder))


@dataclasses.dataclass(frozen=True)
class Job:
    """One chapter with one parameter set (values JSON-ready: numbers, strings, lists, ``None``)."""

    chapter: str
    parameters: tuple[tuple[str, object], ...]

    @property
    def values(self) -> dict:
        return dict(self.parameters)

    def folder(self, out: str | os.PathLike) -> Path:
        """``<out>/<chapter>/<readable parameters>-<key>``: the key covers every value exactly."""
        readable = "_".join(f"{name}={json.dumps(value, separators=(',', ':'))}" for name, value in self.parameters)
        readable = re.sub(r"[^A-Za-z0-9=._,+-]+", "", readable)[:80] or "defaults"
        return Path(out) / Path(self.chapter).stem / f"{readable}-{content_key(self.chapter, self.values)[:10]}"

    def status(self, out: str | os.PathLike) -> str:
        folder = self.folder(out)
        return "done" if (folder / DONE).exists() else "failed" if (folder / FAILED).exists() else "to do"


def grid_jobs(chapters: Sequence[str | os.PathLike], grid: Mapping[str, Sequence] | None = None) -> list[Job]:
    """Every chapter with every combination of the grid's values (a Cartesian product), checked before any work:
    a name a chapter does not declare is an error that lists the names it does."""
    grid = dict(grid or {})
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"the grid's {name!r} must be a non-empty list of values, got {values!r}.")
    jobs = []
    for chapter in chapters:
        declared = chapter_parameters(chapter)
        unknown = sorted(set(grid) - set(declared))
        if unknown:
            raise ValueError(f"{chapter} has no parameter {', '.join(map(repr, unknown))}; its parameters: "
                             f"{', '.join(declared)}.")
        for combination in itertools.product(*grid.values()):
            jobs.append(Job(str(chapter), tuple(zip(grid, combination))))
    return jobs


def read_grid(path: str | os.PathLike) -> tuple[list[str], dict[str, list]]:
    """Chapters and grid from a YAML file ``{chapters: [paths], grid: {name: [values]}}``; chapter paths are
    relative to the file's folder."""
    import yaml

    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - {"chapters", "grid"})
    if unknown or not spec.get("chapters"):
        raise ValueError(f"{path} must hold 'chapters' (a list of chapter files) and optionally 'grid' (name: list of "
                         f"values){'; unknown keys: ' + ', '.join(unknown) if unknown else ''}.")
    return [str(path.parent / chapter) for chapter in spec["chapters"]], dict(spec.get("grid") or {})


def _write_json(path: Path, value: dict) -> None:
    text = json.dumps(value, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def run_job(job: Job, out: str | os.PathLike, kernel_name: str | None = None, progress: bool = False) -> str:
    """Execute one job unless it is done (or running in another runner): ``"done"``, ``"skipped"``,
    ``"running elsewhere"`` or ``"failed"`` (the traceback is in its ``failed.json``)."""
    import papermill

    folder = check_writable(job.folder(out))
    try:
        lock = FileLock(str(folder / ".lock"), timeout=0)
        lock.acquire()
    except Timeout:
        return "running elsewhere"
    try:
        if (folder / DONE).exists():
            return "skipped"
        (folder / JOB).write_text(json.dumps({"chapter": job.chapter, "parameters": job.values}, indent=1))
        notebook = _as_ipynb(job.chapter, folder)
        declared = _declared(notebook)
        parameters = dict(job.values)
        if "output_dir" in declared:
            parameters["output_dir"] = str((folder / "results").resolve())
        for name, shared in SHARED_PARAMETERS.items():
            if name in declared:
                parameters.setdefault(name, str((Path(out) / shared).resolve()))
        start = time.perf_counter()
        try:
            executed = papermill.execute_notebook(
                str(notebook), str(folder / "executed.ipynb"), parameters=parameters,
                kernel_name=kernel_name or "python3", progress_bar=progress, cwd=str(folder))
        except Exception as error:  # the job failed: say why and let the others run
            _write_json(folder / FAILED, {"error": f"{type(error).__name__}: {error}",
                                          "traceback": traceback.format_exc()})
            return "failed"
        (folder / FAILED).unlink(missing_ok=True)
        record = {"chapter": job.chapter, "parameters": job.values, "seconds": time.perf_counter() - start,
                  "checks": notebook_records(executed)}
        _write_json(folder / DONE, record)
        return "done"
    finally:
        lock.release()


def run_grid(jobs: Sequence[Job], out: str | os.PathLike, kernel_name: str | None = None, progress: bool = True,
             client=None) -> dict[str, list[Job]]:
    """Run every job not done yet, with a progress bar; returns the jobs by outcome.

    Without ``client`` the jobs run one after the other in this process. With a ``dask.distributed`` ``Client``
    (:func:`local_cluster`, or one connected to a cluster's scheduler) they run on its workers, one job per worker
    at a time; a job whose worker dies is given to another worker, and reported ``"lost"`` (with a
    ``failed.json`` saying so, to be run again) if workers keep dying under it.
    """
    out = check_writable(out)
    outcomes: dict[str, list[Job]] = {}
    if client is None:
        bar = tqdm(jobs, desc="jobs", unit="job", disable=not progress)
        for job in bar:
            bar.set_postfix_str(str(job.folder(out).relative_to(out)), refresh=True)
            outcomes.setdefault(run_job(job, out, kernel_name), []).append(job)
        return outcomes
    from distributed import as_completed

    futures = {client.submit(_run_job_on_worker, job, str(out), kernel_name, pure=False,
                             key=f"steerlib-run-{content_key(job.chapter, job.values)}"): job for job in jobs}
    for future in tqdm(as_completed(futures), total=len(futures), desc="jobs", unit="job", disable=not progress):
        job = futures[future]
        try:
            outcome = future.result()
        except Exception as error:  # the worker died too often (KilledWorker) or the task could not run
            outcome = "lost"
            _write_json(job.folder(out) / FAILED, {"error": f"{type(error).__name__}: {error} (the worker running "
                                                            "it was lost)", "traceback": ""})
        outcomes.setdefault(outcome, []).append(job)
    return outcomes


def _run_job_on_worker(job: Job, out: str, kernel_name: str | None) -> str:
    """:func:`run_job` on a Dask worker. On a local cluster of several GPUs (workers named 0, 1, ...), worker ``i``
    gives its kernels GPU ``i`` only; a worker that already sees a chosen set (a cluster scheduler sets
    ``CUDA_VISIBLE_DEVICES``) keeps it."""
    from distributed import get_worker

    name = get_worker().name
    if "CUDA_VISIBLE_DEVICES" not in os.environ and isinstance(name, int) and _gpu_count() > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(name % _gpu_count())
    return run_job(job, out, kernel_name)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster(n_workers: int | None = None):
    """A ``dask.distributed`` client of a cluster on this machine: ``n_workers`` worker processes (default: one
    per GPU, at least one), one job each at a time. Needs the ``cluster`` extra (``pip install steerlib[cluster]``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ValueError("the Dask engine needs the 'cluster' extra: pip install 'steerlib[cluster]' "
                         "(dask[distributed], dask-jobqueue).") from error
    n_workers = n_workers or max(1, _gpu_count())
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster)


def cluster_client(scheduler: str):
    """A client of a running Dask scheduler: its address (``tcp://host:8786``) or its scheduler file (JSON), e.g.
    one started on a Slurm cluster (README). Needs the ``cluster`` extra."""
    try:
        from distributed import Client
    except ImportError as error:
        raise ValueError("the Dask engine needs the 'cluster' extra: pip install 'steerlib[cluster]'.") from error
    if Path(scheduler).is_file():
        return Client(scheduler_file=scheduler)
    return Client(scheduler)


def collect(out: str | os.PathLike):
    """One row per check row of every finished job under ``out``: the chapter, the job's parameters (one column
    each; lists as JSON text), the table's title, the claim, ``measured`` and ``expected`` as numbers (NaN for a
    word) and as text, the relation, ``passed``, and the job's seconds and folder. A pandas ``DataFrame`` with one
    type per column (so it writes to parquet as well as CSV), empty when nothing has finished."""
    import pandas as pd

    rows = []
    for done in sorted(Path(out).glob(f"*/*/{DONE}")):
        record = json.loads(done.read_text())
        parameters = {name: json.dumps(value) if isinstance(value, (list, dict)) else value
                      for name, value in record["parameters"].items()}
        rows += [{"chapter": Path(record["chapter"]).stem, **parameters, **row, "seconds": record["seconds"],
                  "job": str(done.parent)} for table in record["checks"] for row in record_rows(table)]
    return pd.DataFrame(rows)


def _parse_settings(settings: Sequence[str]) -> dict[str, list]:
    """``["seed=0", "seed=1", "layers=[6, 15]"]`` -> ``{"seed": [0, 1], "layers": [[6, 15]]}`` (values in YAML)."""
    import yaml

    grid: dict[str, list] = {}
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"--set {setting!r}: write NAME=VALUE (repeat --set NAME=... for several values).")
        grid.setdefault(name.strip(), []).append(yaml.safe_load(value))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="steerlib-run", description="Run chapters over a grid of parameters (resumable), then collect every "
        "check into one table.",
        epilog="Example: steerlib-run book/llm/mmlu.md --set concept=evil --set concept=joy --set seed=0 "
               "--set seed=1 --out runs   (4 jobs; run it again to finish a run that was stopped)")
    parser.add_argument("chapters", nargs="*", help="chapter files (.md or .ipynb)")
    parser.add_argument("--grid", help="a YAML file {chapters: [...], grid: {name: [values]}}")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="one value of a parameter (YAML: 3, 0.5, null, [6, 15], text); repeat for more values")
    parser.add_argument("--out", default="runs", help="output folder (default: runs)")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: python3, this environment)")
    parser.add_argument("--workers", type=int, help="run on a local Dask cluster of this many worker processes "
                        "(one job each at a time; on a GPU box give the number of GPUs: one job per GPU)")
    parser.add_argument("--scheduler", help="run on a running Dask cluster: its scheduler address or scheduler file")
    parser.add_argument("--collect", metavar="FILE", help="also write every check row to FILE (.csv or .parquet)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and their status, run nothing")
    args = parser.parse_args(argv)
    try:
        chapters, grid = read_grid(args.grid) if args.grid else ([], {})
        chapters += args.chapters
        if not chapters:
            parser.error("give chapter files or --grid FILE.")
        grid.update(_parse_settings(args.settings))
        jobs = grid_jobs(chapters, grid)
    except ValueError as error:
        print(f"steerlib-run: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for job in jobs:
            print(f"{job.status(args.out):>6}  {job.folder(args.out)}")
        return 0
    client = (cluster_client(args.scheduler) if args.scheduler
              else local_cluster(args.workers) if args.workers else None)
    try:
        outcomes = run_grid(jobs, args.out, args.kernel, client=client)
    finally:
        if client is not None:
            client.close()
    summary = ", ".join(f"{len(done)} {outcome}" for outcome, done in sorted(outcomes.items()))
    print(f"steerlib-run: {len(jobs)} jobs: {summary}.")
    for job in outcomes.get("failed", []):
        error = json.loads((job.folder(args.out) / FAILED).read_text())["error"]
        print(f"  failed: {job.folder(args.out)}: {error.splitlines()[0][:200]}", file=sys.stderr)
    table = collect(args.out)
    if len(table):
        failed_rows = int((~table["passed"].astype(bool)).sum())
        print(f"steerlib-run: {len(table)} check rows from {table['job'].nunique()} finished jobs, {failed_rows} "
              "not passed.")
    if args.collect:
        path = Path(args.collect)
        table.to_parquet(path) if path.suffix == ".parquet" else table.to_csv(path, index=False)
        print(f"steerlib-run: check rows written to {path}.")
    return 1 if outcomes.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
