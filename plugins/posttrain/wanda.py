"""Wanda: pruning by weights and activations (Sun et al. 2023, arXiv 2306.11695; METHODS.md §10).

For every target layer, with ``X`` its calibration inputs in sequential mode
(:mod:`.calibration`): ``S_ij = |W_ij| · ||X_j||_2``, the input feature's norm over all
calibration columns (tokens/positions × samples). Within each output row the ``(1 - s)``
fraction with the largest scores is kept — ``round((1 - s)·cols)`` per row, ties to the lower
input index — or, with ``nm: [N, M]``, the N largest of every group of M consecutive inputs
(along the input axis; for convolutions inputs at one kernel position, as for ``nm``).
Weights are not updated: a masking operator. A layer whose input dimension is not a multiple
of M is skipped with one warning and stays dense, as with the ``nm`` operator.

Allocation: ``scope: layer`` (default, the paper's) prunes every layer to ``s``;
``scope: global`` gives each layer the sparsity one global magnitude threshold over all targets
would (magnitude's allocation, the one ``magnitude`` with ``scope: global`` and CrAM use), then
chooses within each layer by Wanda's score. ``scope: owl`` gives every block the sparsity its
outlier ratio earns (:mod:`.owl`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from compressor.plugin_api import (
    Target,
    hookimpl,
    keep_count,
)
from compressor_plugins.posttrain.calibration import (
    LayerStatistics,
)
from compressor_plugins.posttrain.patterns import PatternConfig, PatternPruner

__all__ = ["Wanda", "group_keep", "row_keep"]


def row_keep(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Per row of ``scores`` ``[rows, cols]``: the ``keep`` largest (ties: lower index)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if keep > 0:
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        mask.scatter_(1, order[:, :keep], True)
    return mask


def group_keep(scores: torch.Tensor, keep: int, group: int) -> torch.Tensor:
    """Per row, in every group of ``group`` consecutive columns: the ``keep`` largest."""
    rows, cols = scores.shape
    grouped = scores.reshape(rows * cols // group, group)
    return row_keep(grouped, keep).reshape(rows, cols)


class Wanda(PatternPruner):
    """``{kind: wanda}`` (unstructured, per output row) or ``{kind: wanda, nm: [2, 4]}``."""

    class Config(PatternConfig):
        kind: Literal["wanda"]

    STATISTIC = "norms"

    NAME = "wanda"

    def compute_masks(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        return {name: mask for name, (_, mask) in self.compressed(weights, sparsity).items()}

    def compress_layer(
        self, target: Target, weight: torch.Tensor, stats: LayerStatistics, sparsity: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert stats.value is not None
        scores = weight.abs() * stats.value.sqrt().to(weight.dtype)[None, :]
        if self.config.nm is not None:
            mask = group_keep(scores, *self.config.nm)
        else:
            mask = row_keep(scores, keep_count(weight.shape[1], sparsity))
        return torch.where(mask, weight, torch.zeros_like(weight)), mask


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(Wanda)
