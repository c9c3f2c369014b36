"""Run a study: every (recipe, seed) in a fresh session, results into the study's store.

Finished runs are skipped when the study is run again (an interrupted study resumes where it
stopped; a run interrupted mid-way continues from its own checkpoint). A failing run is
recorded with its error and the study goes on. Where the runs execute is the launcher's
business (:mod:`compressor.contract.launcher`); only this driver writes the store.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from compressor.contract.errors import CompressorError
from compressor.contract.evaluation import Evaluation
from compressor.contract.launcher import Events, Launcher, Outcome
from compressor.host.manager import Plugins
from compressor.study.spec import Study, Trial
from compressor.study.store import STORE, Point, Store
from compressor.study.worker import TrialJob, run_job
from compressor.train.progress import console


def headline(report: dict[str, Any]) -> str:
    """The stored name of the run's headline metric (``test_accuracy``, ``test_perplexity``)."""
    return f"test_{report.get('metric', {}).get('name', 'accuracy')}"


def training_points(report: dict[str, Any]) -> list[Point]:
    key = headline(report)
    return [(row["epoch"], row[key], "", "line") for row in report.get("history", []) if key in row]


def metrics_of(report: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics stored per run: the run's own (every ``test_*`` metric, sparsity, train
    time), then each evaluator's as ``<evaluator>:<metric>`` (only what it declared)."""
    metrics = {k: float(v) for k, v in report["metrics"].items()}
    metrics["sparsity"] = float(report["sparsity"]["global"])
    metrics["train_time_s"] = float(report.get("train_time_s", math.nan))
    for name, result in report.get("evaluations", {}).items():
        for metric, value in Evaluation.from_dict(result).metrics.items():
            metrics[f"{name}:{metric}"] = value
    return metrics


def curves_of(report: dict[str, Any]) -> dict[str, list[Point]]:
    """The training curve and every curve the evaluators declared (``<evaluator>:<curve>``)."""
    curves = {"training": training_points(report)}
    for name, result in report.get("evaluations", {}).items():
        for curve in Evaluation.from_dict(result).curves:
            curves[f"{name}:{curve.name}"] = [(p.x, p.y, p.label, p.style) for p in curve.points]
    return curves


class StudyLock:
    """One ``compare`` per study folder: a second one on the same folder is refused (two would
    write the same runs and mix their timings)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".compare.lock"
        while True:
            self.handle = self.path.open("w")
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.handle.close()
                raise CompressorError(
                    f"another compare is running on {folder}; wait for it or use another --out"
                ) from None
            if self._current():
                return
            self.handle.close()  # a finishing compare removed the file we locked: lock anew

    def _current(self) -> bool:
        """Whether the file locked is still the one at ``path`` (release removes it)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file, then unlock: nothing is left in the study folder."""
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def run_study(
    study: Study,
    out_dir: str | Path,
    *,
    plugins: Plugins,
    progress: bool = True,
    rerun_failed: bool = True,
    launcher: Launcher | None = None,
) -> Store:
    """Run what is not finished yet through ``launcher`` (default: one at a time, in this
    process); the driver alone writes the store. Return the store."""
    out = Path(out_dir)
    lock = StudyLock(out)
    try:
        store = Store(out / STORE)
        store.meta("name", study.name)
        store.meta("description", study.description)
        store.meta("labels", "\n".join(study.labels))
        store.meta("baseline", study.baseline)
        if launcher is None:
            launcher = InProcess(None, out)
        threads = launcher.threads_per_job()
        recorder = Recorder(store, out, len(study.trials), progress, launcher.in_process)
        jobs = []
        for position, trial in enumerate(study.trials, start=1):
            status = store.status(trial.key, trial.recipe.hash())
            if status == "done" or (status == "failed" and not rerun_failed):
                if progress:
                    console.print(
                        f"[dim][{position}/{recorder.total}] {trial.key}: already {status}[/dim]"
                    )
                continue
            job = TrialJob(
                key=trial.key,
                label=trial.label,
                seed=trial.seed,
                position=position,
                source=trial.recipe.source,
                run_dir=str(out / "runs" / trial.folder),
                plugin_files=plugins.files,
                threads=threads,
                progress=progress and launcher.in_process,
            )
            recorder.trials[trial.key] = trial
            jobs.append(job)
        work: Callable[[TrialJob], Outcome] = run_job
        if launcher.in_process:
            work = functools.partial(run_job, plugins=plugins)
        launcher.run(jobs, work, recorder)
    finally:
        lock.release()
    return store


class InProcess(Launcher):
    """The engine's own way, when no launcher is named: one trial after another, here."""

    @property
    def in_process(self) -> bool:
        return True

    def run(self, jobs: Sequence[Any], work: Callable[[Any], Outcome], events: Events) -> None:
        for job in jobs:
            events.started(job, "in this process")
            events.finished(job, work(job))


def build_launcher(plugins: Plugins, config: Any, folder: Path) -> Launcher:
    """A launcher from its validated config, or a mapping with its ``name``."""
    registry = plugins.registries.launchers
    if isinstance(config, dict):
        try:
            entry = registry.get(config["name"])
        except KeyError as exc:
            raise CompressorError(str(exc.args[0])) from None
        try:
            config = entry.config.model_validate(config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise CompressorError(f"launcher '{entry.name}': {where}: {first['msg']}") from None
    launcher: Launcher = registry.build(config, folder)
    return launcher


def default_launcher(plugins: Plugins) -> str:
    """The launcher ``--jobs N`` means when none is named: the first registered as default."""
    for entry in plugins.registries.launchers:
        if getattr(entry.cls, "default", False):
            return entry.name
    raise CompressorError("no launcher runs trials in parallel here; name one with --launcher")


class Recorder:
    """The driver's side of a launcher: prints progress and records every outcome."""

    def __init__(
        self, store: Store, out: Path, total: int, progress: bool, in_process: bool
    ) -> None:
        self.store, self.out, self.total = store, out, total
        self.progress, self.in_process = progress, in_process
        self.trials: dict[str, Trial] = {}

    def started(self, job: TrialJob, where: str) -> None:
        if not self.progress:
            return
        head = f"[bold][{job.position}/{self.total}][/bold] {job.title}"
        if self.in_process:
            console.rule(head)
        else:
            console.print(f"{head}: started ({where})")

    def finished(self, job: TrialJob, outcome: Outcome) -> None:
        trial = self.trials[job.key]
        common: dict[str, Any] = {
            "key": trial.key,
            "label": trial.label,
            "seed": trial.seed,
            "position": job.position,
            "recipe_name": trial.recipe.name,
            "recipe_hash": trial.recipe.hash(),
        }
        if outcome.status == "done" and outcome.report is not None:
            report = outcome.report
            self.store.record(
                **common, report=report, metrics=metrics_of(report), curves=curves_of(report)
            )
            if self.progress and not self.in_process:
                name = headline(report)
                value = report.get("metrics", {}).get(name)
                shown = f": {name} {value:.4g}" if isinstance(value, float) else ""
                console.print(f"[{job.position}/{self.total}] {job.title}: done{shown}")
            return
        message = outcome.error or "the run failed without a message"
        self.store.record(**common, report=None, error=message)
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(outcome.traceback or message)
        console.print(
            f"[red]{trial.key} failed:[/red] {message} (details in {run_dir / 'error.txt'})",
            markup=True,
            highlight=False,
        )
