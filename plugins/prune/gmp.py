"""Gradual magnitude pruning and one-shot pruning modifiers (METHODS.md §3).

GMP = operator + schedule: whenever the schedule's target changes inside ``[start, end]``,
masks are recomputed at ``s(t)``; the core applies them to gradients before every step and to
weights after it, so pruned weights stay exactly zero. After ``end`` the masks are frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from compressor.plugin_api import (
    CompressionContext,
    ConfigError,
    GradualModifier,
    Modifier,
    OperatorSpec,
    ScheduleSpec,
    Sparsity,
    StepSpec,
    TypeConfig,
    apply_masks,
    apply_projection,
    default_operator,
    hookimpl,
)


class GMP(GradualModifier):
    class Config(TypeConfig):
        type: Literal["gmp"]
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        schedule: ScheduleSpec


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
