"""Magnitude top-k masks (METHODS.md §1), over all selected tensors (``global``) or per tensor.

Keeps exactly ``k = round((1 - s)·n)`` entries by ``|w|``; ties are broken deterministically
(among equal magnitudes the earlier index in the concatenated order is kept, as a stable
descending sort would), so achieved sparsity equals the target to within one element per tensor.
The mask is found in linear time (a selection for the threshold, then ties), not by sorting:
CrAM computes one every training step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from compressor import hookimpl
from compressor.interfaces import Operator, OperatorConfig


def keep_count(n: int, sparsity: float) -> int:
    """``round((1 - s)·n)`` with halves rounded up, clamped to ``[0, n]``."""
    return min(n, max(0, math.floor((1.0 - sparsity) * n + 0.5)))


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest entries of a 1-D tensor (stable tie order).

    Exactly what ``argsort(scores, descending=True, stable=True)[:keep]`` selects, found without
    a sort: ``t`` is a selected order statistic (the keep-th largest, or the (n-keep)-th
    smallest, whichever ``topk`` is shorter), everything above ``t`` is kept, and the first
    ``keep - #(> t)`` entries equal to ``t`` fill the rest. No host sync, so it suits GPUs too.
    """
    n = scores.numel()
    if keep <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if keep >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if 2 * keep <= n:
        threshold = torch.topk(scores, keep, sorted=False).values.min()
    else:
        threshold = torch.topk(scores, n - keep, largest=False, sorted=False).values.max()
    above = scores > threshold
    ties = scores == threshold
    need = keep - above.sum()
    return above | (ties & (torch.cumsum(ties, 0) <= need))


class Magnitude(Operator):
    class Config(OperatorConfig):
        kind: Literal["magnitude"]
        scope: Literal["global", "layer"] = "global"

    def masks(
        self,
        weights: Mapping[str, torch.Tensor],
        sparsity: float | None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        if sparsity is None:
            raise ValueError("the magnitude operator needs a target sparsity")
        names = [t.name for t in self.targets if t.name in weights] or list(weights)
        if self.config.scope == "layer":
            return {
                name: topk_mask(
                    weights[name].detach().abs().flatten(),
                    keep_count(weights[name].numel(), sparsity),
                ).view_as(weights[name])
                for name in names
            }
        flat = torch.cat([weights[name].detach().abs().flatten() for name in names])
        mask = topk_mask(flat, keep_count(flat.numel(), sparsity))
        out, offset = {}, 0
        for name in names:
            n = weights[name].numel()
            out[name] = mask[offset : offset + n].view_as(weights[name])
            offset += n
        return out


@hookimpl
def register_operators(register):  # type: ignore[no-untyped-def]
    register(Magnitude)
