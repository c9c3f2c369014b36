"""Where a study's trials run: worker processes (--jobs), submitit, a plugin's launcher.

Every launcher must store exactly the results a serial study stores (the same trials, the same
metrics to the last bit: each trial is seeded, and every path runs it with one torch thread),
and a worker that dies must lose only its own run.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.study.test_compare import write_study

TIMED = ("train_time_s",)
"""Metrics that measure time, not results: they differ between any two runs."""


def compare(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compressor.cli", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )


def stored(store: Path) -> dict[str, object]:
    """Every run's status and its metrics, except the timings."""
    db = sqlite3.connect(store / "results.sqlite")
    runs = {key: status for key, status in db.execute("SELECT key, status FROM runs")}
    metrics: dict[str, dict[str, float]] = {}
    for key, name, value in db.execute("SELECT key, name, value FROM metrics"):
        if name not in TIMED:
            metrics.setdefault(key, {})[name] = value
    db.close()
    return {"runs": runs, "metrics": metrics}


def study_with(folder: Path, launcher: str) -> Path:
    path = write_study(folder)
    path.write_text(path.read_text() + f"launcher: {launcher}\n")
    return path


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The reference: the study run one trial after another in the driver (one thread)."""
    folder = tmp_path_factory.mktemp("serial")
    study_with(folder, "{name: local, threads: 1}")
    done = compare(folder, "compare", "study.yaml", "--out", "out", "--quiet")
    assert done.returncode == 0, done.stderr
    result = stored(folder / "out")
    assert len(result["runs"]) == 4 and set(result["runs"].values()) == {"done"}  # type: ignore[attr-defined]
    return result


def test_jobs_2_stores_exactly_what_a_serial_study_stores(
    serial: dict[str, object], tmp_path: Path
) -> None:
    study_with(tmp_path, "{name: local, threads: 1}")
    done = compare(tmp_path, "compare", "study.yaml", "--out", "out", "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert stored(tmp_path / "out") == serial
    assert done.stderr.count("started (worker pid") == 4
    pids = {line.rsplit(" ", 1)[-1] for line in done.stderr.splitlines() if "worker pid" in line}
    assert len(pids) == 2, "two workers, each reused for the next trial"
    for run in (tmp_path / "out" / "runs").iterdir():
        assert (run / "report.json").is_file() and (run / "model.pt").is_file()


KILLER = """\
import os, signal
from pathlib import Path
from compressor.plugin_api import hookimpl

@hookimpl
def step_finished(context, step, loss):
    # the first worker to take the marker dies at its third step, as kill -9 would do it
    if step == 3:
        try:
            Path(os.environ["KILL_MARKER"]).unlink()
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_worker_loses_only_its_own_run(
    serial: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_with(tmp_path, "{name: local, threads: 1}")
    (tmp_path / "killer.py").write_text(KILLER)
    marker = tmp_path / "kill-one"
    marker.touch()
    monkeypatch.setenv("KILL_MARKER", str(marker))
    args = ["--plugin", "killer.py", "compare", "study.yaml", "--out", "out", "--jobs", "2"]
    first = compare(tmp_path, *args)
    assert first.returncode == 1, first.stderr
    assert "1 of 4 runs failed" in first.stderr and "killed by SIGKILL" in first.stderr
    after_kill = stored(tmp_path / "out")
    runs = after_kill["runs"]
    assert sorted(runs.values()) == ["done", "done", "done", "failed"]  # type: ignore[attr-defined]
    killed = next(key for key, status in runs.items() if status == "failed")  # type: ignore[attr-defined]
    for key, metrics in after_kill["metrics"].items():  # type: ignore[attr-defined]
        assert metrics == serial["metrics"][key]  # type: ignore[index]
    # the killed run's folder is intact, and the study finishes when compared again
    assert not marker.exists()
    second = compare(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("started (worker pid") == 1 and killed.split("/")[0] in second.stderr
    assert stored(tmp_path / "out") == serial


@pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None,
    reason="submitit is not installed (pip install 'compressor[submitit]')",
)
def test_submitit_local_executor_stores_the_same_results(
    serial: dict[str, object], tmp_path: Path
) -> None:
    study_with(tmp_path, "{name: submitit, cluster: local, cpus_per_task: 1, jobs: 2, poll_s: 0.2}")
    done = compare(tmp_path, "compare", "study.yaml", "--out", "out")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("started (submitit job") == 4
    assert stored(tmp_path / "out") == serial
    logs = tmp_path / "out" / "submitit"
    assert list(logs.iterdir()), "submitit keeps its job logs there"
    assert not (logs / "%j").exists()


REVERSED = """\
from typing import Literal
from compressor.plugin_api import Launcher, LauncherConfig, hookimpl

class Reversed(Launcher):
    '''Runs the trials in this process, last first (what a plugin's launcher can do).'''
    class Config(LauncherConfig):
        name: Literal["reversed"]

    def run(self, jobs, work, events):
        for job in reversed(jobs):
            events.started(job, "reversed")
            events.finished(job, work(job))

@hookimpl
def register_launchers(register):
    register(Reversed)
"""


def test_a_plugin_launcher_is_chosen_with_launcher(
    serial: dict[str, object], tmp_path: Path
) -> None:
    study_with(tmp_path, "{name: local, threads: 1}")
    (tmp_path / "reversed.py").write_text(REVERSED)
    done = compare(
        tmp_path, "--plugin", "reversed.py", "--threads", "1", "compare", "study.yaml",
        "--out", "out", "--launcher", "reversed",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    started = [line for line in done.stderr.splitlines() if "started (reversed)" in line]
    assert [line.split("]")[0] for line in started] == ["[4/4", "[3/4", "[2/4", "[1/4"]
    assert stored(tmp_path / "out") == serial
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report, "the study report is written as for any launcher"


@pytest.mark.parametrize(
    ("launcher", "where", "message"),
    [
        ("{name: local, jobs: 0}", "launcher.jobs", "greater than or equal to 1"),
        ("{name: lokal}", "launcher.name", "did you mean 'local'"),
        ("{name: local, job: 2}", "launcher.job", "did you mean 'jobs'"),
        ("{name: submitit, timeout_min: -1}", "launcher.timeout_min", "greater than 0"),
    ],
)
def test_a_bad_launcher_section_is_one_located_line(
    tmp_path: Path, launcher: str, where: str, message: str
) -> None:
    study = study_with(tmp_path, launcher)
    line = len(study.read_text().splitlines())
    done = compare(tmp_path, "validate", "study.yaml")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"study.yaml:{line}:") and f" {where}: " in lines[0]
    assert message in lines[0]


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_jobs_must_be_a_positive_number(tmp_path: Path, jobs: str) -> None:
    write_study(tmp_path)
    done = compare(tmp_path, "compare", "study.yaml", "--jobs", jobs)
    assert done.returncode == 2 and "--jobs" in done.stderr and "Traceback" not in done.stderr
