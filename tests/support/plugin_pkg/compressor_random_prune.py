"""A third-party compressor plugin: random pruning, a baseline for any comparison.

Installed as its own distribution; compressor finds it through the ``compressor`` entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from compressor import hookimpl
from compressor.contract.bases import Operator, OperatorConfig


class RandomOperator(Operator):
    """Keeps a uniformly random ``1 - s`` fraction of each tensor (drawn from the session RNG)."""

    class Config(OperatorConfig):
        kind: Literal["random"]

    def masks(
        self,
        weights: Mapping[str, torch.Tensor],
        sparsity: float | None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        if sparsity is None:
            raise ValueError("random pruning needs a target sparsity")
        out = {}
        for name, weight in weights.items():
            n = weight.numel()
            keep = round((1 - sparsity) * n)
            order = torch.randperm(n, generator=generator)
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order[:keep]] = True
            out[name] = mask.view_as(weight)
        return out


@hookimpl
def register_operators(register):  # type: ignore[no-untyped-def]
    register(RandomOperator)
