"""Gradual magnitude pruning and one-shot pruning modifiers (METHODS.md §3).

GMP = operator + schedule: whenever the schedule's target changes inside ``[start, end]``,
masks are recomputed at ``s(t)``; the core applies them to gradients before every step and to
weights after it, so pruned weights stay exactly zero. After ``end`` the masks are frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from compressor.plugin_api import (
    CompressionContext,
    ConfigError,
    Modifier,
    Operator,
    OperatorSpec,
    ScheduleSpec,
    Sparsity,
    StepSpec,
    TypeConfig,
    hookimpl,
)
from compressor_plugins.prune.magnitude import default_operator


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


class GMP(Modifier):
    class Config(TypeConfig):
        type: Literal["gmp"]
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        schedule: ScheduleSpec

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


class OneShot(Modifier):
    """Prune once at step ``at``; the masks then stay (fine-tuning keeps them).

    A projection operator (``is_projection``: SparseGPT, quantization, unification) writes its
    values into the weights, and its zeros become the masks; later training keeps the zeros but
    not the values (a quantized model leaves its grid if it trains on)."""

    class Config(TypeConfig):
        type: Literal["oneshot"]
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        sparsity: Sparsity | None = None
        at: StepSpec = 0

    def __init__(self, config: Any, context: CompressionContext) -> None:
        super().__init__(config, context)
        self.operator = context.build_operator(config.operator)
        self.at = context.clock.steps(config.at)
        if self.at > context.clock.total_steps:
            raise ConfigError(
                f"at is step {self.at}, after the last step ({context.clock.total_steps}): "
                "it would never prune",
                ("at",),
            )
        given = [] if config.sparsity is None else [config.sparsity]
        (self.sparsity,) = self.operator.levels(given, loc=("sparsity",))
        self.done = False

    def masked_names(self) -> set[str]:
        return {t.name for t in self.operator.targets}

    def update(self, context: CompressionContext) -> None:
        if not self.done and context.step >= self.at:
            if self.operator.is_projection:
                apply_projection(context, self.operator, self.sparsity)
            else:
                apply_masks(context, self.operator, self.sparsity)
            self.done = True

    def timeline(self) -> list[tuple[int, str]]:
        return [(self.at, f"prune once to sparsity {self.sparsity:.4f}; masks kept afterwards")]

    def report(self, context: CompressionContext) -> dict[str, Any]:
        return {"target_sparsity": self.sparsity}

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state["done"])


@hookimpl
def register_modifiers(register: Callable[[type], None]) -> None:
    register(GMP)
    register(OneShot)
