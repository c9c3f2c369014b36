"""Magnitude top-k masks (METHODS.md §1), over all selected tensors (``global``) or per tensor.

Keeps exactly ``k = round((1 - s)·n)`` entries by ``|w|``; ties are broken deterministically
(the earlier index in the concatenated order is pruned first), so achieved sparsity equals the
target to within one element per tensor.
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
    """Boolean mask of the ``keep`` largest entries of a 1-D tensor (stable tie order)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        order = torch.argsort(scores, descending=True, stable=True)
        mask[order[:keep]] = True
    return mask


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
