"""SparseGPT: one-shot pruning with OBS updates (Frantar & Alistarh 2023, arXiv 2301.00774).

METHODS.md §10, per target layer with ``X`` its calibration inputs in sequential mode
(:mod:`.calibration`) and ``W`` its GEMM weight ``[rows, cols]``: ``H = 2·X·Xᵀ + λI``,
``λ = damp·mean(diag H)``; ``U`` the upper Cholesky factor of ``H⁻¹``; columns in blocks of
``block_size`` (:func:`.obs.obs_sweep`). The mask is chosen adaptively, from the weights as the
earlier columns' updates left them:

* unstructured: at the start of each block, over the whole block (all rows), the entries with
  the smallest ``w² / U_jj²`` are pruned. The block's count is ``P(end) − P(start)`` with
  ``P(c) = rows·c − round((1 − s)·rows·c)``, so the layer prunes exactly what ``magnitude``
  with ``scope: layer`` would (ties: the lower flat index is kept);
* ``nm: [N, M]``: at the first column of every group of M, per row the N largest ``w²/U_jj²``
  of the group are kept (``block_size`` must be a multiple of M). Layers whose input dimension
  is not a multiple of M are skipped with one warning and stay dense.

Allocation: ``scope: layer`` (default, the paper's) prunes every layer to ``s``;
``scope: global`` gives each layer the sparsity one global magnitude threshold over all targets
would (magnitude's allocation), then solves each layer at that sparsity.
``scope: owl`` gives every block the sparsity its outlier ratio earns (:mod:`.owl`).

Then column by column: pruned entries become exactly zero, the error ``(w_j − ŵ_j)/U_jj`` updates
the block's later columns through ``U[j, j+1:]``, and after the block all later columns get the
lazy update. The kept weights change, so this is a projection (``compute_project``); its mask
is the non-zeros of the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, model_validator

from compressor.plugin_api import Target, hookimpl, keep_count, topk_mask
from compressor_plugins.posttrain.calibration import (
    LayerStatistics,
)
from compressor_plugins.posttrain.obs import inverse_hessian_factor, obs_sweep
from compressor_plugins.posttrain.patterns import PatternConfig, PatternPruner
from compressor_plugins.posttrain.wanda import group_keep

__all__ = ["BlockMask", "GroupMask", "SparseGPT", "sparsegpt_layer"]


class BlockMask:
    """Unstructured: the mask of each block, chosen when the block starts."""

    def __init__(self, rows: int, cols: int, sparsity: float, device: torch.device) -> None:
        self.rows, self.sparsity = rows, sparsity
        self.keep = torch.ones(rows, cols, dtype=torch.bool, device=device)

    def pruned_before(self, column: int) -> int:
        n = self.rows * column
        return n - keep_count(n, self.sparsity)

    def begin_block(self, start: int, block: torch.Tensor, diag: torch.Tensor) -> None:
        width = block.shape[1]
        prune = self.pruned_before(start + width) - self.pruned_before(start)
        scores = (block.square() / diag.square()[None, :]).flatten()
        keep = topk_mask(scores, scores.numel() - prune).view(self.rows, width)
        self.keep[:, start : start + width] = keep

    def column(self, j: int, local: int, block: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        w = block[:, local]
        return torch.where(self.keep[:, j], w, torch.zeros_like(w))


class GroupMask:
    """N:M: each group's mask, chosen at the group's first column."""

    def __init__(self, rows: int, cols: int, keep: int, group: int, device: torch.device) -> None:
        self.n, self.m = keep, group
        self.keep = torch.ones(rows, cols, dtype=torch.bool, device=device)

    def begin_block(self, start: int, block: torch.Tensor, diag: torch.Tensor) -> None:
        return None

    def column(self, j: int, local: int, block: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        if j % self.m == 0:
            part = slice(local, local + self.m)
            scores = block[:, part].square() / diag[part].square()[None, :]
            self.keep[:, j : j + self.m] = group_keep(scores, self.n, self.m)
        w = block[:, local]
        return torch.where(self.keep[:, j], w, torch.zeros_like(w))


def sparsegpt_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    *,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one GEMM weight ``[rows, cols]``: ``(Ŵ, keep-mask)`` (``Ŵ`` is ``weight``
    itself, updated, with ``inplace``; a new tensor otherwise)."""
    w = weight if inplace else weight.clone()
    rows, cols = w.shape
    factor = inverse_hessian_factor(hessian, damp).to(w.device)
    if nm is not None:
        if block_size % nm[1] or cols % nm[1]:
            raise ValueError(f"N:M groups of {nm[1]} need block_size and cols multiples of it")
        rule: BlockMask | GroupMask = GroupMask(rows, cols, nm[0], nm[1], w.device)
    else:
        rule = BlockMask(rows, cols, sparsity, w.device)
    obs_sweep(w, factor, block_size, rule)
    return w, rule.keep


class SparseGPT(PatternPruner):
    """``{kind: sparsegpt}`` (unstructured) or ``{kind: sparsegpt, nm: [2, 4]}``."""

    class Config(PatternConfig):
        kind: Literal["sparsegpt"]
        block_size: int = Field(128, gt=0, description="columns per lazy-update block (B)")
        damp: float = Field(0.01, gt=0, description="λ = damp · mean(diag H)")

        @model_validator(mode="after")
        def _blocks_hold_groups(self) -> SparseGPT.Config:
            if self.nm is not None and self.block_size % self.nm[1]:
                raise ValueError(
                    f"block_size {self.block_size} must be a multiple of the group size "
                    f"{self.nm[1]}"
                )
            return self

    STATISTIC = "hessian"

    NAME = "sparsegpt"

    def compute_project(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        return {name: value for name, (value, _) in self.compressed(weights, sparsity).items()}

    def compress_layer(
        self, target: Target, weight: torch.Tensor, stats: LayerStatistics, sparsity: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert stats.value is not None
        c = self.config
        return sparsegpt_layer(  # weight is the driver's own copy
            weight,
            stats.value,
            sparsity,
            nm=c.nm,
            block_size=c.block_size,
            damp=c.damp,
            inplace=True,
        )


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(SparseGPT)
