"""The evaluations of a run and its report: the history of test metrics during training, the
final evaluators, ``model.pt`` and ``report.json``."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from compressor.contract.evaluation import Evaluation, Evaluator
from compressor.engine.session import Session
from compressor.kit.files import atomic_save, atomic_write_json
from compressor.recipe.schema import Recipe
from compressor.train.context import RunContext
from compressor.train.distributed import World
from compressor.train.runlog import RunLog

REPORT = "report.json"
MODEL = "model.pt"


def format_metric(value: float, percent: bool) -> str:
    return f"{100 * value:.2f}%" if percent else f"{value:.4g}"


class History:
    """The evaluation rows of a run, carried across resumes: one per scheduled evaluation,
    and a ``partial`` one where a run stops off the schedule (a resumed run replaces it)."""

    def __init__(
        self, context: RunContext, world: World, runlog: RunLog, rows: list[dict[str, Any]]
    ) -> None:
        self.context = context
        self.world = world
        self.runlog = runlog
        self.rows = rows
        self.resumed_at = context.session.step

    def test_metrics(self) -> dict[str, float]:
        """The task's metrics of the model on the test set, named ``test_<metric>``."""
        return {f"test_{k}": v for k, v in self.context.measure(self.context.model).items()}

    def evaluate(self, train_loss: float | None) -> dict[str, Any]:
        """Append (and log) a row at the session's step; only rank 0 measures."""
        session = self.context.session
        row = {
            "step": session.step,
            "epoch": round(session.clock.epoch_of(session.step), 4),
            "train_loss": train_loss,
            **(self.test_metrics() if self.world.main else {}),
            "sparsity": session.sparsity()["global"],
        }
        self.rows.append(row)
        if session.step > self.resumed_at:  # a resumed run logged its last step already
            self.runlog.log(
                session.step,
                {k: v for k, v in row.items() if k not in ("step", "epoch")},
                "test",
            )
        return row

    def describe(self, row: dict[str, Any]) -> str:
        """One line for the progress display."""
        metric = self.context.metric
        value = format_metric(row[f"test_{metric.name}"], metric.percent)
        return (
            f"step {row['step']} (epoch {row['epoch']:.2f}): {metric.title} {value}, "
            f"sparsity {row['sparsity']:.4f}"
        )


def final_report(
    recipe: Recipe,
    out: Path,
    history: History,
    evaluators: dict[str, Evaluator],
    times: dict[str, float],
    started: float,
) -> dict[str, Any]:
    """Rank 0, after training: save ``model.pt``, evaluate the final model (the history's last
    row and every ``evaluate:`` evaluator), write ``report.json``; returns the report."""
    context, world, runlog = history.context, history.world, history.runlog
    session: Session = context.session
    model, config = context.model, recipe.config
    atomic_save(model.state_dict(), out / MODEL)
    if not history.rows or history.rows[-1]["step"] != session.step:
        history.evaluate(None)
    evaluations = {name: e.run(context, model).to_dict() for name, e in evaluators.items()}
    runlog.log(
        session.step,
        {
            f"{name}:{key}": value
            for name, result in evaluations.items()
            for key, value in Evaluation.from_dict(result).metrics.items()
        },
        "evaluate",
    )
    extra: dict[str, Any] = {}
    if world.distributed:
        extra["distributed"] = {
            "world_size": world.size,
            "global_batch_size": config.data.batch_size * world.size,
            "evaluated_by": "rank 0",
        }
    report = session.finalize(
        {
            "metric": asdict(context.metric),
            "metrics": {k: v for k, v in history.rows[-1].items() if k.startswith("test_")},
            "evaluations": evaluations,
            "history": history.rows,
            "steps_per_epoch": session.clock.steps_per_epoch,
            "skipped_steps": session.scaler.skipped_steps,
            "train_time_s": times["train_s"],
            "train_cpu_s": times["train_cpu_s"],
            "wall_time_s": time.perf_counter() - started,
            "seed": config.train.seed,
            "recipe_config": recipe.to_dict(),
            **extra,
        }
    )
    atomic_write_json(report, out / REPORT)
    runlog.finish(report)
    return report
