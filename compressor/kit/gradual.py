"""Gradual pruning: masks that follow a sparsity schedule (METHODS.md §3).

The skeleton shared by GMP and the gradual N:M ramp, and the two ways a modifier hands an
operator's result to the run (masks only, or a projection's values and its zeros).
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.contract.context import CompressionContext
from compressor.contract.errors import ConfigError
from compressor.contract.modifier import Modifier
from compressor.contract.operator import Operator


def apply_masks(context: CompressionContext, operator: Operator, sparsity: float | None) -> None:
    """Compute masks on the current weights and hand them to the run's mask store."""
    weights = {t.name: t.param for t in operator.targets}
    for name, mask in operator.masks(weights, sparsity, generator=context.generator).items():
        context.masks.set(name, mask)


def apply_projection(
    context: CompressionContext, operator: Operator, sparsity: float | None
) -> None:
    """Write ``C(w)`` into the weights (a projection's own values: SparseGPT's updated
    weights, quantized ones) and keep its zeros as the run's masks."""
    weights = {t.name: t.param for t in operator.targets}
    values = operator.project(weights, sparsity, generator=context.generator)
    with torch.no_grad():
        for name, value in values.items():
            weights[name].copy_(value)
            context.masks.set(name, value != 0)


class GradualModifier(Modifier):
    """GMP's skeleton: an operator and a schedule; whenever the schedule's target changes
    inside ``[start, end]`` masks are recomputed at ``s(t)``, and frozen after ``end``.

    A subclass gives the ``Config`` (with ``operator`` and ``schedule`` fields) and may change
    how masks follow a target (:meth:`prune_to`) and which schedules it accepts
    (:meth:`check_schedule`).
    """

    def __init__(self, config: Any, context: CompressionContext) -> None:
        super().__init__(config, context)
        self.operator = context.build_operator(config.operator)
        self.schedule = context.build_schedule(config.schedule)
        self.start, self.end = self.schedule.span() or (0, context.clock.total_steps)
        self.check_schedule()
        self.current: float | None = None

    def check_schedule(self) -> None:
        """Raise ConfigError when the schedule asks for what the operator cannot give."""
        for step, field in ((self.start, "initial"), (self.end, "final")):
            value = self.schedule(step)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"sparsity must be in [0, 1), got {value:g}", ("schedule", field))
        self.operator.levels([self.schedule(self.end)], loc=("schedule", "final"))

    def sparsity_decreases(self) -> tuple[str, ...] | None:
        steps = [self.start, *self.schedule.milestones(), self.end]
        values = [
            self.schedule(step) for step in sorted(set(steps)) if self.start <= step <= self.end
        ]
        falls = any(later < earlier for earlier, later in zip(values, values[1:], strict=False))
        return ("schedule", "final") if falls else None

    def prune_to(self, context: CompressionContext, target: float) -> None:
        """Set the masks for sparsity ``target`` (subclasses change how)."""
        apply_masks(context, self.operator, target)

    def masked_names(self) -> set[str]:
        return {t.name for t in self.operator.targets}

    def update(self, context: CompressionContext) -> None:
        step = context.step
        if step < self.start or step > self.end:
            return
        target = self.schedule(step)
        if target == self.current or (self.current is None and target <= 0.0):
            return
        self.prune_to(context, target)
        self.current = target

    def timeline(self) -> list[tuple[int, str]]:
        rows = [(s, f"target sparsity {self.schedule(s):.4f}") for s in self.schedule.milestones()]
        rows.append((self.end, "masks frozen from here on (fine-tuning)"))
        return rows

    def report(self, context: CompressionContext) -> dict[str, Any]:
        return {
            "target_sparsity": self.schedule(self.end),
            "masked_tensors": len(self.masked_names()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = state["current"]
