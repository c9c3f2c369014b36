"""OWL: outlier-weighted layer-wise sparsity (Yin et al. 2023, arXiv 2310.05175; METHODS.md §10).

``scope: owl`` on Wanda or SparseGPT. Before pruning, one dense pass of the block pipeline
gives every target's Wanda scores ``A_ij = |W_ij|·||X_j||``. A *unit* is a block (all its
targets; a target outside the blocks is its own unit). Its outlier ratio ``D`` is the share of
its scores above ``M`` times their mean, over the unit's scores concatenated (as the released
code computes it per decoder layer). Kept fraction ``r = 2λ·(D − min D)/(max D − min D)``
(zeros when all ``D`` are equal), shifted so that ``mean(r) = 1 − S``; the unit's sparsity is
``1 − r`` clipped to [0, 1], and every target in it is pruned to that by the chosen method.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from pydantic import ConfigDict, Field

from compressor.plugin_api import TypeConfig

__all__ = ["OwlConfig", "outlier_ratio", "owl_levels"]


class OwlConfig(TypeConfig):
    """``owl: {M: 5, lambda: 0.08}``: the outlier threshold and the allocation's spread."""

    model_config = ConfigDict(populate_by_name=True)

    M: float = Field(5.0, gt=0, description="an outlier is a score above M times the mean")
    lam: float = Field(
        0.08, ge=0, le=0.5, alias="lambda", description="sparsities spread within S ± λ"
    )


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """The share of ``scores`` (one unit's, concatenated) above ``m`` times their mean."""
    flat = torch.cat([s.detach().flatten().double() for s in scores])
    return float((flat > m * flat.mean()).double().mean())


def owl_levels(
    ratios: Mapping[Hashable, float], sparsity: float, lam: float
) -> dict[Hashable, float]:
    """Each unit's sparsity from its outlier ratio ``D`` (see module doc)."""
    keys = list(ratios)
    d = torch.tensor([ratios[k] for k in keys], dtype=torch.float64)
    spread = float(d.max() - d.min())
    r = (d - d.min()) * (2 * lam / spread) if spread > 0 else torch.zeros_like(d)
    r = r - r.mean() + (1.0 - sparsity)
    return {k: min(1.0, max(0.0, 1.0 - float(v))) for k, v in zip(keys, r, strict=True)}
