"""Exact projection onto "Kp blocks pruned + Ku blocks unified" per layer (METHODS.md §8).

For a block ``v`` with ``n`` real entries:

* prune: ``z = 0`` at squared distance ``p(v) = ||v||²``;
* unify: ``z_i = σ(v_i)·mean|v|`` with ``σ(x) = +1 if x >= 0 else -1`` (``torch.sign`` would map
  0 to 0 and leave the block off the constraint set) at ``d(v) = ||v||² - ||v||_1²/n``. Any
  feasible ``z = a·s`` has ``||a·s - v||² = n·a² - 2a·Σ s_i v_i + ||v||²``, minimised by
  ``s = σ(v)`` and ``a = ||v||_1/n``.

The layer projection picks disjoint P (|P| = Kp) and U (|U| = Ku) minimising
``Σ_P p + Σ_U d``: sort blocks by ``p - d``; some optimum has every P block before every U block
(swapping a later P block with an earlier U block never costs more), so for each split point
take the Kp smallest ``p`` of the prefix and the Ku smallest ``d`` of the suffix (two running
heaps, O(N log N)) and keep the best split. Prune-only and unify-only are plain top-k.

Blocks whose entries already share one magnitude get ``d = 0`` and keep that magnitude exactly,
so the projection is idempotent in value (``Π(Π(W)) == Π(W)`` bit for bit).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from pydantic import Field, model_validator

from compressor.plugin_api import Operator, hookimpl
from compressor_plugins.blocks.view import (
    BlockConfigMixin,
    BlockFields,
    BlockLayout,
    expand,
    from_blocks,
    layout_of,
    to_blocks,
)

FREE, PRUNED, UNIFIED = 0, 1, 2
"""Block labels (int8)."""


def sigma(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0`` else ``-1`` (never 0, unlike ``torch.sign``)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def block_count(ratio: float, num_blocks: int) -> int:
    """``floor(ratio·Nb)``; the epsilon keeps 0.57·100 at 57 despite binary rounding."""
    return min(num_blocks, math.floor(ratio * num_blocks + 1e-9))


def magnitudes(blocks: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block: ``mean|v|`` over real entries, and whether all real ``|v_i|`` are already equal.

    An already-unified block keeps its exact magnitude (a floating mean of equal values may be
    off by an ulp), which makes the projection idempotent.
    """
    absv = blocks.abs()
    counts = valid.sum(dim=1).clamp(min=1).to(blocks.dtype)
    amax = absv.masked_fill(~valid, 0.0).amax(dim=1)
    amin = absv.masked_fill(~valid, math.inf).amin(dim=1)
    uniform = amax == amin
    mean = torch.where(uniform, amax, absv.masked_fill(~valid, 0.0).sum(dim=1) / counts)
    return mean, uniform


def block_costs(blocks: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, d)``: squared distances of each block to pruned and to unified (float64)."""
    v = blocks.detach().double().masked_fill(~valid, 0.0)
    counts = valid.sum(dim=1).clamp(min=1).double()
    p = v.pow(2).sum(dim=1)
    d = (p - v.abs().sum(dim=1).pow(2) / counts).clamp(min=0.0)
    _, uniform = magnitudes(v, valid)
    return p, torch.where(uniform, torch.zeros_like(d), d)


def unify_blocks(blocks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Every block replaced by its nearest unified block ``σ(v)·mean|v|`` (pads stay 0)."""
    mean, _ = magnitudes(blocks, valid)
    return (sigma(blocks) * mean[:, None]).masked_fill(~valid, 0.0)


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest values (ties: lower index first)."""
    return torch.argsort(values, stable=True)[:k]


def smallest_k_sums(values: list[float], k: int) -> list[float]:
    """``out[s]`` = sum of the ``k`` smallest of ``values[:s]`` (inf while fewer than ``k``),
    for every prefix in one pass with a max-heap of the ``k`` smallest so far."""
    out = [math.inf] * (len(values) + 1)
    heap: list[float] = []  # negated: a max-heap
    total = 0.0
    for s, value in enumerate(values):
        if len(heap) < k:
            heapq.heappush(heap, -value)
            total += value
        elif value < -heap[0]:
            total += value + heapq.heappushpop(heap, -value)
        if len(heap) == k:
            out[s + 1] = total
    return out


def select_labels(p: torch.Tensor, d: torch.Tensor, kp: int, ku: int) -> torch.Tensor:
    """Optimal disjoint labels: ``kp`` blocks PRUNED and ``ku`` UNIFIED, minimising cost."""
    n = p.numel()
    if kp < 0 or ku < 0 or kp + ku > n:
        raise ValueError(f"cannot prune {kp} and unify {ku} of {n} blocks")
    labels = torch.full((n,), FREE, dtype=torch.int8, device=p.device)
    if kp == 0 or ku == 0:
        if kp:
            labels[_smallest(p, kp)] = PRUNED
        if ku:
            labels[_smallest(d, ku)] = UNIFIED
        return labels
    order = torch.argsort(p - d, stable=True)
    ps, ds = p[order].tolist(), d[order].tolist()
    # prefix[s] = sum of the kp smallest ps[:s]; suffix[s] = sum of the ku smallest ds[s:].
    prefix = smallest_k_sums(ps, kp)
    suffix = smallest_k_sums(ds[::-1], ku)[::-1]
    best = min(range(kp, n - ku + 1), key=lambda s: prefix[s] + suffix[s])
    head, tail = order[:best], order[best:]
    labels[head[_smallest(p[head], kp)]] = PRUNED
    labels[tail[_smallest(d[tail], ku)]] = UNIFIED
    return labels


def project_blocks(blocks: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Blocks with the labels imposed: PRUNED -> 0, UNIFIED -> σ(v)·mean|v|, FREE unchanged."""
    unified = unify_blocks(blocks, valid)
    out = torch.where((labels == UNIFIED)[:, None], unified, blocks)
    return out.masked_fill((labels == PRUNED)[:, None], 0.0)


def layer_labels(
    weight: torch.Tensor, layout: BlockLayout, prune_ratio: float, unify_ratio: float
) -> torch.Tensor:
    """The optimal labels of one layer for the given ratios (``floor(r·Nb)`` blocks each)."""
    p, d = block_costs(to_blocks(weight.detach(), layout), layout.valid(weight.device))
    nb = layout.num_blocks
    return select_labels(p, d, block_count(prune_ratio, nb), block_count(unify_ratio, nb))


def apply_labels(weight: torch.Tensor, layout: BlockLayout, labels: torch.Tensor) -> torch.Tensor:
    """``weight`` projected onto the structure fixed by ``labels`` (a new tensor)."""
    blocks = to_blocks(weight.detach(), layout)
    return from_blocks(project_blocks(blocks, layout.valid(weight.device), labels), layout)


class UnifyFields(BlockFields):
    """The constraint set of one layer: blocks, and the fractions pruned and unified (shared by
    the ``unify`` operator and the ADMM modifier)."""

    prune_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    unify_ratio: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _fits(self) -> UnifyFields:
        if self.prune_ratio + self.unify_ratio > 1.0 + 1e-12:
            raise ValueError(
                f"prune_ratio + unify_ratio must be <= 1, got "
                f"{self.prune_ratio:g} + {self.unify_ratio:g}"
            )
        return self


class UnifyConfig(UnifyFields, BlockConfigMixin):
    kind: Literal["unify"]


class Unify(Operator):
    """Exact per-layer projection onto ``floor(r_p·Nb)`` pruned + ``floor(r_u·Nb)`` unified
    blocks. With ``prune_ratio: 0`` it is block unification alone.

    Where a sparsity is expected (GMP, CrAM, one-shot) the sparsity passed in is used as the
    prune ratio, and :meth:`fixed_sparsity` reports ``prune_ratio``. :meth:`masks` are the
    nonzero entries of the projection.
    """

    Config = UnifyConfig

    def fixed_sparsity(self) -> float | None:
        return float(self.config.prune_ratio)

    def layout(self, weight: torch.Tensor) -> BlockLayout:
        return layout_of(weight, self.config.block, self.config.view)

    def label(self, sparsity: float | None) -> str:
        return f"unify {'x'.join(map(str, self.config.block))} {self.target(sparsity):g}"

    def labels(
        self, weights: Mapping[str, torch.Tensor], sparsity: float | None = None
    ) -> dict[str, torch.Tensor]:
        """Per tensor, the ``[Nb]`` int8 block labels of the optimal projection."""
        prune = self.target(sparsity)
        if prune + self.config.unify_ratio > 1.0 + 1e-12:
            raise ValueError(f"prune ratio {prune:g} + unify_ratio exceeds 1")
        oriented = {n: self.out_in(n, w) for n, w in self.weights_in(weights).items()}
        return {
            n: layer_labels(w, self.layout(w), prune, self.config.unify_ratio)
            for n, w in oriented.items()
        }

    def compute_project(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        projected = {}
        for n, labels in self.labels(weights, sparsity).items():
            w = self.out_in(n, weights[n])
            projected[n] = self.out_in(n, apply_labels(w, self.layout(w), labels)).contiguous()
        return projected

    def pruned_mask(self, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Weight-shaped bool keep-mask (False in pruned blocks)."""
        return expand(labels != PRUNED, self.layout(weight))


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(Unify)
