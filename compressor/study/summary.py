"""A study's results, per method and aggregated over seeds, read from the store alone.

What appears besides the run's own metrics (trained metric, sparsity, step time) is exactly
what the evaluators declared in their results: table columns, curves and legends.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from compressor.contract.context import Metric
from compressor.contract.evaluation import Column, Curve, Evaluation
from compressor.study.store import Store

DEFAULT_METRIC = Metric("accuracy", "test accuracy", higher_is_better=True, percent=True)


@dataclass
class MethodSummary:
    """Everything reported for one method (label), over its seeds."""

    label: str
    seeds: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    step_time_s: list[float] = field(default_factory=list)
    wall_time_s: list[float] = field(default_factory=list)
    curves: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = field(
        default_factory=dict
    )
    """curve key -> (point label, style) -> (x, y) of every seed, in the curve's order."""
    training: list[list[tuple[float, float]]] = field(default_factory=list)


@dataclass(frozen=True)
class StudyColumn:
    """A declared column and the stored metric (``<evaluator>:<metric>``) it shows."""

    evaluator: str
    key: str
    column: Column


@dataclass
class StudySummary:
    name: str
    methods: list[MethodSummary]
    baseline: str | None
    metric: Metric
    columns: list[StudyColumn]
    curves: dict[str, Curve]
    """curve key (``<evaluator>:<curve>``) -> the curve's declaration (points left empty)."""
    legends: dict[str, str]
    """evaluator -> its legend sentence."""


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(store: Store, name: str) -> StudySummary:
    """Per-method summaries in study order, with the columns and curves evaluators declared."""
    methods: dict[str, MethodSummary] = {}
    for label in (store.meta("labels") or "").splitlines():
        methods[label] = MethodSummary(label)
    metric: Metric | None = None
    declared: dict[str, list[tuple[int, Column]]] = {}  # evaluator -> (first seen, column)
    curves: dict[str, Curve] = {}
    legends: dict[str, str] = {}
    for row in store.runs():
        summary = methods.setdefault(row.label, MethodSummary(row.label))
        if row.status != "done":
            summary.failed.append(f"seed {row.seed}: {row.error}")
            continue
        summary.seeds.append(row.seed)
        for key, value in store.metrics(row.key).items():
            summary.values.setdefault(key, []).append(value)
        if row.step_time_s:
            summary.step_time_s.append(row.step_time_s)
        if row.wall_time_s:
            summary.wall_time_s.append(row.wall_time_s)
        summary.training.append([(x, y) for x, y, _, _ in store.curve(row.key, "training")])
        for curve in store.curve_names(row.key):
            if curve == "training":
                continue
            points = summary.curves.setdefault(curve, {})
            for x, y, point_label, style in store.curve(row.key, curve):
                points.setdefault((point_label, style), []).append((x, y))
        report = store.report(row.key) or {}
        if metric is None and "metric" in report:
            metric = Metric(**report["metric"])
        for evaluator, result in report.get("evaluations", {}).items():
            evaluation = Evaluation.from_dict(result)
            known = declared.setdefault(evaluator, [])
            for column in evaluation.columns:
                if all(c.metric != column.metric for _, c in known):
                    known.append((len(known), column))
            for curve_decl in evaluation.curves:
                curves.setdefault(f"{evaluator}:{curve_decl.name}", _without_points(curve_decl))
            if evaluation.legend:
                legends.setdefault(evaluator, evaluation.legend)
    columns = [
        StudyColumn(evaluator, f"{evaluator}:{column.metric}", column)
        for evaluator, known in declared.items()
        for _, column in sorted(known, key=lambda item: (item[1].order, item[0]))
    ]
    baseline = store.meta("baseline")
    return StudySummary(
        name,
        list(methods.values()),
        baseline if baseline in methods else None,
        metric or DEFAULT_METRIC,
        columns,
        curves,
        legends,
    )


def _without_points(curve: Curve) -> Curve:
    return Curve(
        curve.name,
        curve.title,
        curve.x_label,
        curve.y_label,
        [],
        curve.x_percent,
        curve.y_percent,
        curve.higher_is_better,
    )
