"""Run a study: every (recipe, seed) in a fresh session, results into the study's store.

Finished runs are skipped when the study is run again (an interrupted study resumes where it
stopped; a run interrupted mid-way continues from its own checkpoint). A failing run is
recorded with its error and the study goes on.
"""

from __future__ import annotations

import fcntl
import math
import traceback
from pathlib import Path
from typing import Any

from compressor.contract.errors import CompressorError
from compressor.contract.evaluation import Evaluation
from compressor.contract.files import load_checkpoint
from compressor.host.manager import Plugins
from compressor.study.spec import Study, Trial
from compressor.study.store import STORE, Point, Store
from compressor.train.loop import CHECKPOINT, resume_key, run
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
        self.handle = self.path.open("w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise CompressorError(
                f"another compare is running on {folder}; wait for it or use another --out"
            ) from None

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def run_study(
    study: Study,
    out_dir: str | Path,
    *,
    plugins: Plugins,
    progress: bool = True,
    rerun_failed: bool = True,
) -> Store:
    """Run what is not finished yet; return the store."""
    out = Path(out_dir)
    lock = StudyLock(out)
    try:
        store = Store(out / STORE)
        store.meta("name", study.name)
        store.meta("description", study.description)
        store.meta("labels", "\n".join(study.labels))
        store.meta("baseline", study.baseline)
        total = len(study.trials)
        for position, trial in enumerate(study.trials, start=1):
            status = store.status(trial.key, trial.recipe.hash())
            if status == "done" or (status == "failed" and not rerun_failed):
                if progress:
                    console.print(f"[dim][{position}/{total}] {trial.key}: already {status}[/dim]")
                continue
            if progress:
                console.rule(f"[bold][{position}/{total}][/bold] {trial.label} · seed {trial.seed}")
            _run_trial(trial, position, out, store, plugins, progress)
    finally:
        lock.release()
    return store


def _run_trial(
    trial: Trial, position: int, out: Path, store: Store, plugins: Plugins, progress: bool
) -> None:
    run_dir = out / "runs" / trial.folder
    common: dict[str, Any] = {
        "key": trial.key,
        "label": trial.label,
        "seed": trial.seed,
        "position": position,
        "recipe_name": trial.recipe.name,
        "recipe_hash": trial.recipe.hash(),
    }
    checkpoint = run_dir / CHECKPOINT
    try:
        fresh = checkpoint.exists() and load_checkpoint(checkpoint).get("resume_key") != resume_key(
            trial.recipe
        )
        report = run(
            trial.recipe,
            run_dir,
            plugins=plugins,
            resume=not fresh,
            overwrite=fresh,
            progress=progress,
            label=f"{trial.label} · seed {trial.seed}",
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one failing run must not stop the study
        message = str(exc) if isinstance(exc, CompressorError) else plugins.explain(exc)
        store.record(**common, report=None, error=message)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        console.print(
            f"[red]{trial.key} failed:[/red] {message} (traceback in {run_dir / 'error.txt'})",
            markup=True,
            highlight=False,
        )
        return
    store.record(
        **common,
        report=report,
        metrics=metrics_of(report),
        curves=curves_of(report),
    )
