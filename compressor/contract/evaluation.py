"""Evaluators and what their results mean.

An evaluator measures a trained model and returns an :class:`Evaluation`: its scalar metrics,
which of them are table columns (and how to show them), the curves to plot, and one sentence
of legend. Studies, tables, plots and the CLI render only what evaluators declare, so a
third-party evaluator appears in ``compressor compare`` exactly like a built-in one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from compressor.contract.config import TypeConfig
from compressor.contract.context import CompressionContext, EvaluationContext

PointStyle = Literal["line", "marker", "star"]


@dataclass(frozen=True)
class Column:
    """A table column showing ``metrics[metric]`` (mean ± std over seeds)."""

    metric: str
    title: str
    percent: bool = False
    digits: int = 2
    order: float = 0.0
    """Columns of one evaluator are sorted by ``order`` (ties: first declared first)."""


@dataclass(frozen=True)
class CurvePoint:
    """One point of a curve; points with the same ``label`` are averaged over seeds.

    ``style``: ``line`` points are joined (with a band for the spread over seeds), ``marker``
    points stand alone (hollow diamonds, e.g. a 2:4 pattern), ``star`` marks a model that is
    already where the curve would start (e.g. trained sparse)."""

    x: float
    y: float
    label: str = ""
    style: PointStyle = "line"


@dataclass(frozen=True)
class Curve:
    """A curve per run, drawn with every other method's curve of the same ``name``."""

    name: str
    title: str
    x_label: str
    y_label: str
    points: list[CurvePoint] = field(default_factory=list)
    x_percent: bool = False
    y_percent: bool = False
    higher_is_better: bool | None = True


@dataclass(frozen=True)
class Evaluation:
    """An evaluator's result: what to store, tabulate and plot, and the full details."""

    metrics: dict[str, float] = field(default_factory=dict)
    columns: list[Column] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    legend: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        curves = [
            Curve(**{**c, "points": [CurvePoint(**p) for p in c.get("points", [])]})
            for c in data.get("curves", [])
        ]
        return cls(
            metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
            columns=[Column(**c) for c in data.get("columns", [])],
            curves=curves,
            legend=str(data.get("legend", "")),
            details=dict(data.get("details", {})),
        )


class Evaluator:
    """A configurable evaluation, keyed by its tag under ``evaluate:`` in a recipe."""

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    def check(self, context: CompressionContext) -> None:
        """Raise ConfigError (loc relative to this config) if it cannot work for the model;
        called when the run is prepared, so mistakes surface before training."""

    def run(self, context: EvaluationContext, model: nn.Module) -> Evaluation:
        raise NotImplementedError
