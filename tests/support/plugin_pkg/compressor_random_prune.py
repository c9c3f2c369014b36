"""A third-party compressor plugin: random pruning, a baseline for any comparison, and an
evaluator that reports how many weights the trained model keeps per layer on average.

Installed as its own distribution; compressor finds it through the ``compressor`` entry point.
It imports only :mod:`compressor.plugin_api`, as every plugin should.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from compressor.plugin_api import (
    Column,
    Curve,
    CurvePoint,
    Evaluation,
    EvaluationContext,
    Evaluator,
    Operator,
    OperatorConfig,
    TypeConfig,
    hookimpl,
)


class RandomOperator(Operator):
    """Keeps a uniformly random ``1 - s`` fraction of each tensor (drawn from the session RNG)."""

    class Config(OperatorConfig):
        kind: Literal["random"]

    def compute_masks(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, weight in weights.items():
            n = weight.numel()
            keep = round((1 - sparsity) * n)
            order = torch.randperm(n, generator=generator)
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order[:keep]] = True
            out[name] = mask.view_as(weight)
        return out


class Density(Evaluator):
    """``evaluate: {density: {}}``: the fraction of non-zero weights, overall and per layer."""

    class Config(TypeConfig):
        name: Literal["density"] = "density"

    def run(self, context: EvaluationContext, model: nn.Module) -> Evaluation:
        per_layer = context.sparsity()["per_layer"]
        density = {name: 1.0 - zeros for name, zeros in per_layer.items()}
        overall = 1.0 - context.sparsity()["global"]
        points = [CurvePoint(i, d, name) for i, (name, d) in enumerate(density.items())]
        return Evaluation(
            metrics={"overall": overall},
            columns=[Column("overall", "density %", percent=True)],
            curves=[Curve("density", "Density by layer", "layer index", "density", points)],
            legend="density %: non-zero fraction of the prunable weights",
            details={"per_layer": density},
        )


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(RandomOperator)


@hookimpl
def register_evaluators(register: Callable[[type], None]) -> None:
    register(Density)
