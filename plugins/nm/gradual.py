"""Gradual N:M pruning (``type: gradual_nm``): a GMP-style ramp that ends exactly in N:M.

The schedule gives a sparsity ``s(t)`` that must end at the pattern's ``1 - N/M``. At every
change, each tensor prunes the fraction ``s(t) / (1 - N/M)`` of its ``G·(M - N)`` prunable
group slots: within every group only the ``M - N`` smallest ``|w|`` are candidates, and the
smallest candidates across the tensor go first (:func:`compressor_plugins.nm.nm_ramp_mask`).
Masks are monotone (once pruned, always pruned), reach exactly N:M at ``end`` (``s = 1 - N/M``
prunes every slot) and are frozen after it. Tensors the operator skips stay dense and are not
owned by this modifier, so another modifier may prune them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from compressor.plugin_api import (
    CompressionContext,
    ConfigError,
    GradualModifier,
    OperatorSpec,
    ScheduleSpec,
    TypeConfig,
    hookimpl,
    nm_ramp_mask,
)
from compressor_plugins.nm.operator import NM


def default_nm() -> dict[str, Any]:
    return {"kind": "nm", "keep": 2, "group": 4}


class GradualNM(GradualModifier):
    """GMP whose masks follow the N:M ramp; schedule checks are N:M-specific."""

    operator: NM

    class Config(TypeConfig):
        type: Literal["gradual_nm"]
        operator: OperatorSpec = Field(default_factory=default_nm, validate_default=True)
        schedule: ScheduleSpec

    def check_schedule(self) -> None:
        operator = self.operator
        if not isinstance(operator, NM):
            raise ConfigError(
                f"gradual_nm needs an N:M operator (kind: nm), got kind: {self.config.operator.kind}",
                ("operator", "kind"),
            )
        fixed = operator.fixed_sparsity()
        final = self.schedule(self.end)
        if abs(final - fixed) > 1e-9:
            raise ConfigError(
                f"the N:M {operator.keep}:{operator.group} pattern has sparsity {fixed:g}, "
                f"but the schedule ends at {final:g}",
                ("schedule", "final"),
            )
        initial = self.schedule(self.start)
        if not 0.0 <= initial <= fixed:
            raise ConfigError(
                f"initial sparsity must be in [0, {fixed:g}], got {initial:g}",
                ("schedule", "initial"),
            )

    def masked_names(self) -> set[str]:
        return {t.name for t in self.operator.active_targets()}

    def prune_to(self, context: CompressionContext, target: float) -> None:
        fraction = min(1.0, max(0.0, target / self.operator.fixed_sparsity()))
        operator = self.operator
        for t in operator.active_targets():
            prior = context.masks.get(t.name)
            mask = nm_ramp_mask(
                operator.out_in(t.name, t.param),
                operator.keep,
                operator.group,
                fraction,
                None if prior is None else operator.out_in(t.name, prior),
            )
            context.masks.set(t.name, operator.out_in(t.name, mask).contiguous())

    def timeline(self) -> list[tuple[int, str]]:
        fixed = self.operator.fixed_sparsity()
        rows = [
            (
                s,
                f"target sparsity {self.schedule(s):.4f} ({self.schedule(s) / fixed:.0%} of N:M slots)",
            )
            for s in self.schedule.milestones()
        ]
        rows.append(
            (
                self.end,
                f"exactly {self.operator.keep}:{self.operator.group}; masks frozen from here on",
            )
        )
        return rows

    def report(self, context: CompressionContext) -> dict[str, Any]:
        return {
            "pattern": f"{self.operator.keep}:{self.operator.group}",
            "target_sparsity": self.operator.fixed_sparsity(),
            "masked_tensors": len(self.masked_names()),
            "skipped_tensors": list(self.operator.skipped),
        }


@hookimpl
def register_modifiers(register: Callable[[type], None]) -> None:
    register(GradualNM)
