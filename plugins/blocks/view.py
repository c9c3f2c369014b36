"""Block view of Linear/ConvNd weights and block pruning (METHODS.md §1 Block, §8 Blocks).

A weight is read as its 2-D GEMM matrix ``[out, in·k]`` (``view: in_k``, torch's memory order)
or ``[out, k·in]`` (``view: k_in``, kernel position outermost) and tiled by ``(bo, bi)`` blocks
in row-major block order. When ``out`` or ``in·k`` is not a multiple of the block shape the
matrix is padded with zeros *logically*: :func:`to_blocks` returns a new padded tensor and
:func:`from_blocks` crops before writing, so pads never reach the weight. Every consumer that
needs per-block statistics (mean magnitude, entry counts) uses :attr:`BlockLayout.valid` and
:attr:`BlockLayout.counts` so a partial edge block is treated as the smaller block it really is.

The ``block`` operator keeps the blocks with the largest L2 norm (``round((1-s)·Nb)`` kept,
per layer or globally), ties broken by block index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator

from compressor.plugin_api import (
    Operator,
    OperatorConfig,
    SelectionConfig,
    TypeConfig,
    hookimpl,
    keep_count,
    topk_mask,
)

View = Literal["in_k", "k_in"]


def gemm_view(weight: torch.Tensor, view: View = "in_k") -> torch.Tensor:
    """The 2-D ``[out, in·k]`` (or ``[out, k·in]``) matrix a Linear/Conv weight multiplies as."""
    if weight.dim() < 2:
        raise ValueError(f"a block view needs a weight with >= 2 dims, got {tuple(weight.shape)}")
    if view == "k_in" and weight.dim() > 2:
        order = (0, *range(2, weight.dim()), 1)
        return weight.permute(order).reshape(weight.shape[0], -1)
    return weight.reshape(weight.shape[0], -1)


def from_gemm(
    matrix: torch.Tensor, shape: torch.Size | tuple[int, ...], view: View
) -> torch.Tensor:
    """Inverse of :func:`gemm_view`: the weight-shaped tensor of a GEMM matrix."""
    shape = tuple(shape)
    if view == "k_in" and len(shape) > 2:
        permuted = matrix.reshape(shape[0], *shape[2:], shape[1])
        order = (0, len(shape) - 1, *range(1, len(shape) - 1))
        return permuted.permute(order).contiguous()
    return matrix.reshape(shape)


@dataclass(frozen=True)
class BlockLayout:
    """How one weight tensor is tiled: GEMM size, block shape, grid and edge handling."""

    shape: tuple[int, ...]
    block: tuple[int, int]
    view: View = "in_k"

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def grid(self) -> tuple[int, int]:
        """Number of blocks along the GEMM rows and columns (edges rounded up)."""
        return (-(-self.rows // self.block[0]), -(-self.cols // self.block[1]))

    @property
    def num_blocks(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def block_numel(self) -> int:
        return self.block[0] * self.block[1]

    def valid(self, device: torch.device | None = None) -> torch.Tensor:
        """``[Nb, bo·bi]`` bool: which slots of each block hold a real weight (not a pad)."""
        ones = torch.ones(self.rows, self.cols, dtype=torch.bool, device=device)
        return self._tile(ones)

    def counts(self, device: torch.device | None = None) -> torch.Tensor:
        """``[Nb]`` number of real entries per block (``bo·bi`` except on ragged edges)."""
        return self.valid(device).sum(dim=1)

    def _tile(self, matrix: torch.Tensor) -> torch.Tensor:
        (bo, bi), (gr, gc) = self.block, self.grid
        padded = F.pad(matrix, (0, gc * bi - self.cols, 0, gr * bo - self.rows))
        return padded.reshape(gr, bo, gc, bi).permute(0, 2, 1, 3).reshape(gr * gc, bo * bi)


def layout_of(weight: torch.Tensor, block: tuple[int, int], view: View = "in_k") -> BlockLayout:
    return BlockLayout(tuple(weight.shape), (int(block[0]), int(block[1])), view)


def to_blocks(weight: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """``[Nb, bo·bi]`` copy of ``weight``'s blocks; pad slots are zero (see ``layout.valid``)."""
    if tuple(weight.shape) != layout.shape:
        raise ValueError(f"weight {tuple(weight.shape)} does not match layout {layout.shape}")
    return layout._tile(gemm_view(weight, layout.view))


def from_blocks(blocks: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """The weight-shaped tensor of ``blocks`` (pads cropped, never written anywhere)."""
    (bo, bi), (gr, gc) = layout.block, layout.grid
    if tuple(blocks.shape) != (gr * gc, bo * bi):
        raise ValueError(
            f"blocks {tuple(blocks.shape)} do not match layout grid {(gr * gc, bo * bi)}"
        )
    matrix = blocks.reshape(gr, gc, bo, bi).permute(0, 2, 1, 3).reshape(gr * bo, gc * bi)
    return from_gemm(matrix[: layout.rows, : layout.cols], layout.shape, layout.view)


def expand(per_block: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Broadcast a ``[Nb]`` per-block value to a weight-shaped tensor."""
    return from_blocks(per_block[:, None].expand(-1, layout.block_numel), layout)


def check_block(block: tuple[int, int]) -> tuple[int, int]:
    if len(block) != 2 or block[0] < 1 or block[1] < 1:
        raise ValueError(f"block must be two positive sizes [bo, bi], got {list(block)}")
    return block


class BlockFields(TypeConfig, SelectionConfig):
    """Fields shared by every block-structured config: which tensors, block shape and view
    (operators and the ADMM modifier alike)."""

    block: tuple[int, int] = (4, 4)
    view: View = "in_k"

    @field_validator("block")
    @classmethod
    def _valid_block(cls, block: tuple[int, int]) -> tuple[int, int]:
        return check_block(block)


class BlockConfigMixin(BlockFields, OperatorConfig):
    """Base config of block-structured operators."""


class BlockPrune(Operator):
    """Keep the ``round((1-s)·Nb)`` blocks with the largest L2 norm (per layer or global).

    Partial edge blocks are scored by the norm of their real entries, as the squared norm is
    exactly the cost of pruning them.
    """

    class Config(BlockConfigMixin):
        kind: Literal["block"]
        scope: Literal["layer", "global"] = "layer"

    def label(self, sparsity: float | None) -> str:
        return f"block {'x'.join(map(str, self.config.block))} {self.target(sparsity):g}"

    def compute_masks(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        c = self.config
        weights = {n: self.out_in(n, w) for n, w in weights.items()}  # blocks of [out, in]
        layouts = {n: layout_of(w, c.block, c.view) for n, w in weights.items()}
        scores = {
            n: to_blocks(w.detach(), layouts[n]).pow(2).sum(dim=1) for n, w in weights.items()
        }
        if c.scope == "layer":
            keep = {
                n: topk_mask(scores[n], keep_count(layouts[n].num_blocks, sparsity))
                for n in weights
            }
        else:
            flat = torch.cat([scores[n] for n in weights])
            mask = topk_mask(flat, keep_count(flat.numel(), sparsity))
            keep, offset = {}, 0
            for n in weights:
                keep[n] = mask[offset : offset + layouts[n].num_blocks]
                offset += layouts[n].num_blocks
        return {n: self.out_in(n, expand(keep[n], layouts[n])).contiguous() for n in weights}


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(BlockPrune)
