"""The grid runner: jobs from a grid, a run that survives being killed, failures that do not stop the others, and
one table of every check, on a stand-in chapter (tests/fixtures/chapters/counting.md) executed by papermill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from steerlib.runs import Job, collect, grid_jobs, main, read_grid, run_grid

CHAPTER = str(Path(__file__).parent / "fixtures" / "chapters" / "counting.md")


def test_a_grid_is_every_combination_checked_against_the_chapters_parameters():
    jobs = grid_jobs([CHAPTER], {"seed": [0, 1, 2], "delay": [0.0, 0.5]})
    assert len(jobs) == 6 and len(set(jobs)) == 6
    assert jobs[0].values == {"seed": 0, "delay": 0.0}
    assert len({job.folder("out") for job in jobs}) == 6
    with pytest.raises(ValueError, match="has no parameter 'layers'; its parameters: seed, delay, fail, log, output_dir"):
        grid_jobs([CHAPTER], {"layers": [[1]]})
    with pytest.raises(ValueError, match="non-empty list"):
        grid_jobs([CHAPTER], {"seed": 3})
    with pytest.raises(ValueError, match="no chapter at"):
        grid_jobs(["nowhere.md"])


def test_job_folders_tell_apart_values_that_print_alike():
    one, other = Job(CHAPTER, (("layers", [1, 2]),)), Job(CHAPTER, (("layers", "[1, 2]"),))
    assert one.folder("out") != other.folder("out")
    assert one.folder("out").parent == Path("out") / "counting"


def test_a_grid_file_gives_chapters_relative_to_itself(tmp_path):
    (tmp_path / "grid.yaml").write_text("chapters: [chapters/a.md]\ngrid:\n  seed: [0, 1]\n  layers: [[6], [15]]\n")
    assert read_grid(tmp_path / "grid.yaml") == ([str(tmp_path / "chapters" / "a.md")],
                                                 {"seed": [0, 1], "layers": [[6], [15]]})
    (tmp_path / "bad.yaml").write_text("chapter: a.md\n")
    with pytest.raises(ValueError, match="must hold 'chapters'"):
        read_grid(tmp_path / "bad.yaml")


def test_jobs_run_once_failures_are_recorded_and_checks_collected(tmp_path):
    log = tmp_path / "log.txt"
    jobs = grid_jobs([CHAPTER], {"seed": [0, 1, 2], "log": [str(log)]})
    failing = grid_jobs([CHAPTER], {"seed": [5], "fail": [True]})
    outcomes = run_grid(jobs + failing, tmp_path / "runs", progress=False)
    assert {name: len(done) for name, done in outcomes.items()} == {"done": 3, "failed": 1}
    failure = json.loads((failing[0].folder(tmp_path / "runs") / "failed.json").read_text())
    assert "failed on request (seed 5)" in failure["traceback"]
    assert (jobs[1].folder(tmp_path / "runs") / "results" / "value.txt").read_text() == "1"  # output_dir per job
    again = run_grid(jobs, tmp_path / "runs", progress=False)
    assert {name: len(done) for name, done in again.items()} == {"skipped": 3}
    assert log.read_text().count("finished") == 3
    table = collect(tmp_path / "runs")
    assert sorted(table["seed"]) == [0, 1, 2] and list(table.columns[:4]) == ["chapter", "seed", "log", "table"]
    assert table.set_index("seed")["passed"].to_dict() == {0: True, 1: True, 2: False}
    assert (table["claim"] == "the seed is at most 1").all() and (table["chapter"] == "counting").all()


def _start_runner(out: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "steerlib.runs", CHAPTER, "--out", str(out), "--set", f"log={log}",
               "--set", "delay=1.0"] + [f"--set=seed={seed}" for seed in range(4)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, TQDM_DISABLE="1"))


def test_a_run_killed_midway_and_started_again_loses_and_redoes_no_finished_job(tmp_path):
    out, log = tmp_path / "runs", tmp_path / "log.txt"
    runner = _start_runner(out, log)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*/*/done.json"))) < 2:
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
        time.sleep(0.1)
    os.killpg(runner.pid, signal.SIGKILL)  # the runner and its kernel, as a closed laptop or a cluster would
    runner.wait()
    finished_before = {json.loads(path.read_text())["parameters"]["seed"] for path in out.glob("*/*/done.json")}
    assert 2 <= len(finished_before) < 4
    restarted = _start_runner(out, log)
    stdout, stderr = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, stderr
    assert f"4 jobs: {4 - len(finished_before)} done, {len(finished_before)} skipped" in stdout
    started = log.read_text().splitlines()
    for seed in finished_before:
        assert sum(line.startswith(f"started {seed} ") for line in started) == 1  # not redone
    assert sorted(json.loads(p.read_text())["parameters"]["seed"] for p in out.glob("*/*/done.json")) == [0, 1, 2, 3]


def test_the_command_line_says_what_is_wrong_and_collects_to_a_file(tmp_path, capsys):
    assert main([CHAPTER, "--set", "layers=[1]", "--out", str(tmp_path)]) == 2
    assert "has no parameter 'layers'" in capsys.readouterr().err
    assert main([CHAPTER, "--set", "seed=0", "--set", "seed=3", "--out", str(tmp_path),
                 "--collect", str(tmp_path / "checks.csv")]) == 0
    output = capsys.readouterr().out
    assert "2 jobs: 2 done." in output and "2 check rows from 2 finished jobs, 1 not passed" in output
    assert len((tmp_path / "checks.csv").read_text().splitlines()) == 3
    assert main([CHAPTER, "--set", "seed=0", "--out", str(tmp_path), "--collect", str(tmp_path / "checks.parquet")]) == 0
    assert "check rows written to" in capsys.readouterr().out
    table = pd.read_parquet(tmp_path / "checks.parquet")
    assert list(table["measured"]) == [0.0, 3.0] and list(table["expected_text"]) == ["1", "1"]
    assert main([CHAPTER, "--set", "seed=0", "--out", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().startswith("done")


def test_a_local_dask_cluster_runs_the_grid_and_survives_a_killed_worker(tmp_path):
    """Two worker processes; one is killed while it runs a job: the job goes to a worker again, nothing finished
    is lost, and every job ends done."""
    pytest.importorskip("distributed")
    from steerlib.runs import local_cluster

    out, log = tmp_path / "runs", tmp_path / "log.txt"
    jobs = grid_jobs([CHAPTER], {"seed": [0, 1, 2, 3], "delay": [2.0], "log": [str(log)]})
    client = local_cluster(2)
    try:
        pids = client.run(os.getpid)
        assert len(pids) == 2

        killed = {}

        def kill_a_worker_running_a_job():
            """Wait for a job to start, then kill the worker process whose kernel it runs in."""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                for line in log.read_text().splitlines() if log.exists() else []:
                    words = line.split()
                    if len(words) == 3 and words[0] == "started" and int(words[2]) in pids.values():
                        os.kill(int(words[2]), signal.SIGKILL)
                        killed["seed"] = int(words[1])
                        return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_a_worker_running_a_job)
        killer.start()
        outcomes = run_grid(jobs, out, progress=False, client=client)
        killer.join()
    finally:
        client.close()
    assert {name: len(done) for name, done in outcomes.items()} == {"done": 4}
    started = log.read_text().splitlines()
    assert "seed" in killed, "no worker was killed"
    assert sum(line.startswith(f"started {killed['seed']} ") for line in started) == 2  # again, on a live worker
    assert sorted(json.loads(p.read_text())["parameters"]["seed"] for p in out.glob("*/*/done.json")) == [0, 1, 2, 3]
