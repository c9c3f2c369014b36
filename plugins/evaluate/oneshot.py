"""One-shot robustness evaluation (METHODS.md §7): the metric versus one-shot sparsity.

For every target (each of ``sparsities`` with ``operator``, plus every operator in ``targets``,
e.g. a fixed 2:4 pattern): copy the trained model, compress the copy in one shot, measure,
re-calibrate BatchNorm on a fixed calibration subset of the training data (METHODS.md §6),
measure again. The trained model is never modified: all work happens on a ``copy.deepcopy``.

Also the ``compressor evaluate RUN`` command, which runs this evaluation on a finished run.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table
from torch import nn

from compressor.plugin_api import (
    Column,
    CompressionContext,
    CompressorError,
    ConfigError,
    Curve,
    CurvePoint,
    Evaluation,
    EvaluationContext,
    Evaluator,
    Operator,
    OperatorSpec,
    Sparsity,
    TypeConfig,
    default_operator,
    hookimpl,
    recalibrate_bn,
    sparsity_stats,
)

TRAINED_SPARSE = 0.05
"""A trained model at least this sparse is shown as a star, not as the start of a curve."""


class BNRecalibration(TypeConfig):
    """How BN statistics are re-estimated after compression (``batches: 0`` skips it)."""

    batches: int = Field(100, ge=0)
    batch_size: int = Field(128, gt=0)
    calibration_samples: int = Field(1000, gt=0)
    seed: int = 0


def percent_title(label: str) -> str:
    """'0.9' -> '90%'; any other label stays as it is ('2:4', 'layer 0.9')."""
    try:
        return f"{100 * float(label):g}%"
    except ValueError:
        return label


class OneShotEval(Evaluator):
    """Keyed ``oneshot`` under ``evaluate:``; the result goes into the run report."""

    class Config(TypeConfig):
        name: Literal["oneshot"] = "oneshot"
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        sparsities: list[Sparsity] = Field(default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95])
        targets: list[OperatorSpec] = Field(  # type: ignore[valid-type]
            default_factory=list,
            description="more operators, e.g. N:M; one with no fixed sparsity runs each sparsity",
        )
        bn_recalibration: BNRecalibration = Field(default_factory=BNRecalibration)

    def _levels(self, operator: Operator) -> list[float]:
        """A fixed pattern runs once at its own sparsity; any other operator at each of
        ``sparsities``."""
        return operator.levels(self.config.sparsities if operator.fixed_sparsity() is None else [])

    def _operators(self) -> list[tuple[Any, tuple[str | int, ...]]]:
        where: list[tuple[Any, tuple[str | int, ...]]] = [(self.config.operator, ("operator",))]
        return where + [(config, ("targets", i)) for i, config in enumerate(self.config.targets)]

    def check(self, context: CompressionContext) -> None:
        """Every operator must select tensors of this model (found before training, not after)."""
        for config, loc in self._operators():
            self._levels(context.build_operator(config, at=loc))

    def run(self, context: EvaluationContext, model: nn.Module) -> Evaluation:
        dense = context.measure(model)
        trained_sparsity = float(context.sparsity()["global"])
        results = []
        for config, loc in self._operators():
            operator = context.build_operator(config, at=loc, model=model)
            for sparsity in self._levels(operator):
                results.append(self._one(context, config, loc, sparsity, model))
        return self._evaluation(context, dense, trained_sparsity, results)

    def _one(
        self,
        context: EvaluationContext,
        config: Any,
        loc: tuple[str | int, ...],
        sparsity: float,
        model: nn.Module,
    ) -> dict[str, Any]:
        recal = self.config.bn_recalibration
        pruned = copy.deepcopy(model)
        operator: Operator = context.build_operator(config, at=loc, model=pruned)
        weights = {t.name: t.param for t in operator.targets}
        generator = torch.Generator().manual_seed(recal.seed)
        with torch.no_grad():
            for name, value in operator.project(weights, sparsity, generator=generator).items():
                weights[name].copy_(value)
        achieved = float(sparsity_stats(operator.targets)["global"])  # type: ignore[arg-type]
        before = context.measure(pruned)
        calibration = context.calibration_batches(
            recal.calibration_samples, recal.seed, recal.batches, recal.batch_size
        )
        recalibrate_bn(pruned, calibration, forward=context.forward)
        after = context.measure(pruned)
        return {
            "label": operator.label(sparsity),
            "operator": config.model_dump(mode="json"),
            "target_sparsity": sparsity,
            "sparsity": achieved,
            "before_recalibration": before,
            "after_recalibration": after,
        }

    def _evaluation(
        self,
        context: EvaluationContext,
        dense: dict[str, float],
        trained_sparsity: float,
        results: list[dict[str, Any]],
    ) -> Evaluation:
        metric = context.metric
        name = metric.name
        metrics: dict[str, float] = {"dense": dense[name]}
        columns, points = [], []
        if trained_sparsity >= TRAINED_SPARSE:
            points.append(CurvePoint(trained_sparsity, dense[name], "trained sparse", "star"))
        else:
            points.append(CurvePoint(trained_sparsity, dense[name], "trained", "line"))
        for position, row in enumerate(results):
            label, value = row["label"], row["after_recalibration"][name]
            metrics[label] = value
            metrics[f"{label}/before_recalibration"] = row["before_recalibration"][name]
            metrics[f"{label}/sparsity"] = row["sparsity"]
            numeric = percent_title(label) != label
            columns.append(
                Column(
                    label,
                    percent_title(label),
                    percent=metric.percent,
                    order=float(label) if numeric else 10.0 + position,
                )
            )
            if trained_sparsity < TRAINED_SPARSE:
                points.append(
                    CurvePoint(row["sparsity"], value, label, "line" if numeric else "marker")
                )
        return Evaluation(
            metrics=metrics,
            columns=columns,
            curves=[
                Curve(
                    "robustness",
                    "One-shot robustness",
                    "sparsity of prunable weights (%)",
                    f"{metric.title} after BN re-calibration" + (" (%)" if metric.percent else ""),
                    points,
                    x_percent=True,
                    y_percent=metric.percent,
                    higher_is_better=metric.higher_is_better,
                )
            ],
            legend=(
                f"{', '.join(c.title for c in columns)}: {metric.title} after one-shot compression "
                "of the trained model to that target and BN re-calibration"
            ),
            details={"dense": dense, "results": results},
        )


def parse_nm(text: str) -> dict[str, Any]:
    """``--nm 2:4`` -> an ``nm`` operator config."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise CompressorError(f"--nm takes N:M such as 2:4, not {text!r}")
    return {"kind": "nm", "keep": int(match[1]), "group": int(match[2])}


def evaluate_command(args: argparse.Namespace) -> int:
    """``compressor evaluate RUN``: one-shot robustness of a finished run, table and JSON."""
    options: dict[str, Any] = {"name": "oneshot", "sparsities": args.sparsities}
    if args.nm:
        options["targets"] = [parse_nm(args.nm)]
    options["bn_recalibration"] = {"batches": args.batches}
    config = args.host.validate_config(OneShotEval.Config, options, what="evaluate options")
    context = args.host.restore_run(args.run)
    evaluator = OneShotEval(config)
    try:
        evaluator.check(context)
    except ConfigError as exc:
        raise CompressorError(f"{'.'.join(map(str, exc.loc))}: {exc.message}") from None
    evaluation = evaluator.run(context, context.model)
    metric = context.metric
    scale = 100.0 if metric.percent else 1.0
    unit = " %" if metric.percent else ""
    table = Table(title=f"one-shot robustness of {args.run}")
    for column in ("target", "sparsity", f"before BN recal.{unit}", f"after BN recal.{unit}"):
        table.add_column(column, justify="right")
    table.add_row("dense", "", "", f"{scale * evaluation.details['dense'][metric.name]:.2f}")
    for row in evaluation.details["results"]:
        table.add_row(
            row["label"],
            f"{row['sparsity']:.3f}",
            f"{scale * row['before_recalibration'][metric.name]:.2f}",
            f"{scale * row['after_recalibration'][metric.name]:.2f}",
        )
    console = Console(soft_wrap=True)
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


@hookimpl
def register_evaluators(register: Callable[[type], None]) -> None:
    register(OneShotEval)


@hookimpl
def register_commands(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = cli.add_parser("evaluate", help="one-shot robustness of a finished run's model")
    p.add_argument("run", help="run folder (holds checkpoint.pt)")
    p.add_argument(
        "--oneshot",
        dest="sparsities",
        type=float,
        nargs="+",
        default=[0.5, 0.7, 0.8, 0.9, 0.95],
        metavar="S",
        help="global magnitude sparsities",
    )
    p.add_argument("--nm", help="also an N:M target, e.g. 2:4")
    p.add_argument("--batches", type=int, default=100, help="BN re-calibration batches (0 = none)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=evaluate_command)
