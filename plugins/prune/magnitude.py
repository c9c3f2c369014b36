"""Magnitude top-k masks (METHODS.md §1), over all selected tensors (``global``) or per tensor.

Keeps exactly ``k = round((1 - s)·n)`` entries by ``|w|`` with the plugin API's exact top-k
(:func:`~compressor.plugin_api.topk_masks`: ties to the earlier index, no sort).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from compressor.plugin_api import (
    Operator,
    OperatorConfig,
    hookimpl,
    keep_count,
    topk_mask,
    topk_masks,
)


class Magnitude(Operator):
    class Config(OperatorConfig):
        kind: Literal["magnitude"]
        scope: Literal["global", "layer"] = "global"

    def label(self, sparsity: float | None) -> str:
        level = f"{self.target(sparsity):g}"
        return level if self.config.scope == "global" else f"layer {level}"

    def compute_masks(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        if self.config.scope == "layer":
            return {
                name: topk_mask(
                    w.detach().abs().flatten(), keep_count(w.numel(), sparsity)
                ).view_as(w)
                for name, w in weights.items()
            }
        scores = [w.detach().abs().flatten() for w in weights.values()]
        masks = topk_masks(scores, keep_count(sum(x.numel() for x in scores), sparsity))
        return {
            name: mask.view_as(w) for (name, w), mask in zip(weights.items(), masks, strict=True)
        }


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(Magnitude)
