"""N:M semi-structured sparsity (METHODS.md §1): keep N weights in every group of M.

Groups run along the *input* axis so the pattern matches what sparse tensor cores accelerate:
Linear ``[out, in]`` along ``in``; ConvNd ``[out, in, *k]`` is viewed as ``[out, *k, in]``
first, so a group never straddles kernel positions. Within a group the N largest ``|w|`` are
kept; ties go to the earlier input index, so masks are deterministic.

The operator's pattern implies sparsity ``1 - N/M`` (:meth:`NM.fixed_sparsity`). Asked for a
*lower* sparsity ``s`` it prunes the fraction ``s / (1 - N/M)`` of each tensor's prunable group
slots, smallest ``|w|`` first and never more than ``M - N`` per group (:func:`nm_ramp_mask`),
so gradual schedules pass through partial patterns and end exactly in N:M.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from compressor.plugin_api import (
    CompressionContext,
    ConfigError,
    NMSkippedWarning,
    Operator,
    OperatorConfig,
    Target,
    groupable,
    hookimpl,
    input_dim,
    nm_mask,
    nm_ramp_mask,
)


class NM(Operator):
    """The ``nm`` operator: ``{kind: nm, keep: N, group: M}`` (2:4 by default)."""

    class Config(OperatorConfig):
        kind: Literal["nm"]
        keep: int = Field(2, description="N: weights kept in every group")
        group: int = Field(4, description="M: group size along the input axis")
        strict: bool = Field(
            False, description="reject (instead of skipping) tensors that cannot be grouped"
        )

        @field_validator("keep")
        @classmethod
        def _keep_positive(cls, keep: int) -> int:
            if keep < 1:
                raise ValueError(f"keep (N in N:M) must be at least 1, got {keep}")
            return keep

        @field_validator("group")
        @classmethod
        def _group_above_keep(cls, group: int, info: ValidationInfo) -> int:
            keep = info.data.get("keep")
            if keep is not None and keep >= group:
                raise ValueError(
                    f"keep must be smaller than group (N < M), got keep={keep}, group={group}; "
                    "keep >= group would prune nothing"
                )
            return group

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.keep: int = config.keep
        self.group: int = config.group
        self.skipped: list[str] = []

    def bind(
        self, model: nn.Module, targets: list[Target], context: CompressionContext | None = None
    ) -> None:
        """Keep the tensors that can be grouped; warn once (or fail if strict) about the rest."""
        oriented = {t.name: t.param.t() if t.transposed else t.param for t in targets}
        bad = [t for t in targets if not groupable(oriented[t.name], self.group)]
        described = ", ".join(f"{t.name} (input dim {input_dim(oriented[t.name])})" for t in bad)
        if bad and self.config.strict:
            raise ConfigError(
                f"strict N:M {self.keep}:{self.group}: input dimension not a multiple of "
                f"{self.group} for {described}; exclude them or drop strict",
                ("strict",),
            )
        if bad:
            warnings.warn(
                f"N:M {self.keep}:{self.group} skips {len(bad)} tensor(s) whose input dimension "
                f"is not a multiple of {self.group} (they stay dense): {described}",
                NMSkippedWarning,
                stacklevel=2,
            )
        self.skipped = [t.name for t in bad]
        super().bind(model, targets, context)

    def active_targets(self) -> list[Target]:
        """The bound tensors the pattern applies to (skipped ones excluded)."""
        skipped = set(self.skipped)
        return [t for t in self.targets if t.name not in skipped]

    def fixed_sparsity(self) -> float:
        return 1.0 - self.keep / self.group

    def fraction(self, sparsity: float | None) -> float:
        """The share of prunable group slots a target sparsity asks for (1 = full N:M)."""
        fixed = self.fixed_sparsity()
        if sparsity is None or abs(sparsity - fixed) <= 1e-9:
            return 1.0
        if not 0.0 <= sparsity < fixed:
            raise ValueError(
                f"N:M {self.keep}:{self.group} has sparsity {fixed:g}; cannot reach {sparsity:g}"
            )
        return sparsity / fixed

    def label(self, sparsity: float | None) -> str:
        pattern = f"{self.keep}:{self.group}"
        fraction = self.fraction(sparsity)
        return pattern if fraction >= 1.0 else f"{pattern} {self.target(sparsity):g}"

    def compute_masks(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        """N:M masks; tensors that cannot be grouped get all-True masks (they stay dense)."""
        fraction = self.fraction(sparsity)
        out: dict[str, torch.Tensor] = {}
        for name, stored in weights.items():
            weight = self.out_in(name, stored)  # groups run along the input axis
            if not groupable(weight, self.group):
                mask = torch.ones_like(weight, dtype=torch.bool)
            elif fraction >= 1.0:
                mask = nm_mask(weight, self.keep, self.group)
            else:
                mask = nm_ramp_mask(weight, self.keep, self.group, fraction)
            out[name] = self.out_in(name, mask).contiguous()
        return out


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(NM)
