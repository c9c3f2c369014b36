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
    Operator,
    OperatorConfig,
    Target,
    hookimpl,
)

__all__ = [
    "NM",
    "NMSkippedWarning",
    "from_group_layout",
    "group_view",
    "input_dim",
    "nm_mask",
    "nm_ramp_mask",
    "nm_violations",
    "to_group_layout",
]


class NMSkippedWarning(UserWarning):
    """Some selected tensors cannot be grouped (input dimension not a multiple of M)."""


def to_group_layout(tensor: torch.Tensor) -> torch.Tensor:
    """``[out, in, *k] -> [out, *k, in]``: the input axis last, so groups run along it.

    2-D tensors (Linear) are returned unchanged; the result is a view (not contiguous).
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"N:M needs a weight with at least 2 dims, got shape {tuple(tensor.shape)}"
        )
    if tensor.dim() == 2:
        return tensor
    return tensor.permute(0, *range(2, tensor.dim()), 1)


def from_group_layout(tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_group_layout`: ``[out, *k, in] -> [out, in, *k]``."""
    if tensor.dim() <= 2:
        return tensor
    last = tensor.dim() - 1
    return tensor.permute(0, last, *range(1, last))


def input_dim(tensor: torch.Tensor) -> int:
    """The size of the axis groups run along (``in``; per conv group for grouped convs)."""
    return int(tensor.shape[1]) if tensor.dim() >= 2 else 0


def groupable(tensor: torch.Tensor, group: int) -> bool:
    return tensor.dim() >= 2 and input_dim(tensor) % group == 0


def group_view(tensor: torch.Tensor, group: int) -> torch.Tensor:
    """``[num_groups, group]``: every row is one group of M consecutive input weights."""
    if not groupable(tensor, group):
        raise ValueError(
            f"input dimension {input_dim(tensor)} of shape {tuple(tensor.shape)} "
            f"is not a multiple of the group size {group}"
        )
    return to_group_layout(tensor).reshape(-1, group)


def _from_groups(groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    layout_shape = to_group_layout(like).shape
    return from_group_layout(groups.reshape(layout_shape)).contiguous()


def _check_pattern(keep: int, group: int) -> None:
    if not 1 <= keep < group:
        raise ValueError(f"need 1 <= keep < group, got keep={keep}, group={group}")


def nm_mask(tensor: torch.Tensor, keep: int = 2, group: int = 4) -> torch.Tensor:
    """Boolean keep-mask with the ``keep`` largest ``|x|`` of every group of ``group``.

    Ties go to the earlier input index (stable sort), so the mask is deterministic.
    """
    _check_pattern(keep, group)
    scores = group_view(tensor.detach().abs(), group)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], True)
    return _from_groups(mask, tensor)


def nm_ramp_mask(
    tensor: torch.Tensor,
    keep: int,
    group: int,
    fraction: float,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """A partial N:M mask: prune ``round(fraction · G · (M - N))`` of the tensor's prunable slots.

    Candidates are the ``M - N`` smallest members of every group; the smallest candidates
    across the tensor are pruned first (ties: lower rank within its group, then earlier group).
    Each group therefore loses a prefix of its own ascending order, never more than ``M - N``,
    and ``fraction = 1`` gives exactly :func:`nm_mask`. Entries already pruned in ``prior``
    score below everything else, so ramps are monotone: once pruned, always pruned.
    """
    _check_pattern(keep, group)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    scores = group_view(tensor.detach().abs().float(), group).clone()
    if prior is not None:
        scores[~group_view(prior.to(torch.bool), group)] = -1.0
    prunable = group - keep
    order = torch.argsort(scores, dim=1, stable=True)  # ascending: smallest first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(group, device=order.device).expand_as(order))
    candidate = rank < prunable
    flat = torch.nonzero(candidate.flatten()).squeeze(1)  # row-major: group, then position
    cand_scores = scores.flatten()[flat]
    cand_rank = rank.flatten()[flat]
    # Sort candidates by (score, rank, group): stable sorts applied from the last key.
    by_rank = torch.argsort(cand_rank, stable=True)
    by_score = torch.argsort(cand_scores[by_rank], stable=True)
    ordered = flat[by_rank[by_score]]
    count = min(ordered.numel(), int(fraction * ordered.numel() + 0.5))
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[ordered[:count]] = False
    if prior is not None:  # a prior heavier than this fraction stays pruned
        mask &= group_view(prior.to(torch.bool), group).flatten()
    return _from_groups(mask.view_as(scores), tensor)


def nm_violations(tensor: torch.Tensor, keep: int, group: int) -> int:
    """How many groups hold more than ``keep`` non-zeros (0 means the N:M pattern holds)."""
    nonzeros = (group_view(tensor.detach(), group) != 0).sum(dim=1)
    return int((nonzeros > keep).sum().item())


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
