"""The column-by-column OBS solver shared by SparseGPT and GPTQ (METHODS.md §10).

For one layer with GEMM weight ``W`` ``[rows, cols]`` and Hessian ``H = 2·X·Xᵀ`` ``[cols, cols]``:

1. dampen: ``H + λ·I`` with ``λ = damp · mean(diag H)`` (``λ = 1`` if ``H`` is all zero);
2. ``U``: the upper Cholesky factor of ``(H + λI)⁻¹`` (``(H + λI)⁻¹ = Uᵀ·U``). Row ``j`` of ``U``
   scaled by ``U_jj`` is row ``j`` of the inverse Hessian of the columns ``j..`` that are still
   free once columns ``0..j-1`` are fixed, which is all the sequential OBS updates need;
3. sweep the columns in blocks of ``B``. At the start of a block the rule may choose
   something for the whole block (SparseGPT's adaptive mask). Then for each column ``j`` of
   the block: the rule gives the column's compressed value ``ŵ_j`` (masked, or quantized);
   ``e = (w_j − ŵ_j) / U_jj``; the block's later columns get ``W[:, j+1:b] −= e·U[j, j+1:b]``;
   column ``j`` is set to ``ŵ_j`` exactly. After the block, every later column gets the lazy
   update ``W[:, b:] −= E·U[block, b:]`` with ``E`` the block's errors.

Lazy updates are exactly the immediate ones regrouped, so the result is the plain sequential
OBS solution for the same choices (tests/plugins/posttrain check it against explicit inverses).
All of it runs in the weight's compute dtype (float32, or float64 for float64 weights); ``H``,
its dampening and both factorisations are float64.
"""

from __future__ import annotations

from typing import Protocol

import torch

from compressor.plugin_api import CompressorError

__all__ = ["ColumnRule", "inverse_hessian_factor", "obs_sweep"]


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper ``U`` with ``(H + λI)⁻¹ = Uᵀ·U``, ``λ = damp·mean(diag H)`` (float64)."""
    h = hessian.detach().double().clone()
    mean = float(h.diagonal().mean())
    h.diagonal().add_(damp * mean if mean > 0 else 1.0)
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise CompressorError(
            f"the dampened Hessian is not positive definite (damp {damp:g}); raise 'damp'"
        )
    factor, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if int(info) != 0:
        raise CompressorError(
            f"the inverse Hessian is not positive definite (damp {damp:g}); raise 'damp'"
        )
    return factor


class ColumnRule(Protocol):
    """What a solver does with each block and column (a mask, a quantizer)."""

    def begin_block(self, start: int, block: torch.Tensor, diag: torch.Tensor) -> None:
        """Called with the block's current weights ``[rows, b]`` and ``U``'s diagonal on it."""

    def column(self, j: int, local: int, block: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        """The compressed value of column ``j`` (``block[:, local]``), ``[rows]``: a new tensor,
        ``block`` left as it is (the sweep reads the column's old value after the call)."""


def obs_sweep(
    weight: torch.Tensor, factor: torch.Tensor, block_size: int, rule: ColumnRule
) -> torch.Tensor:
    """Run the sweep on ``weight`` ``[rows, cols]`` in place (see module doc); returns it."""
    cols = weight.shape[1]
    u = factor.to(weight.dtype)
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block = weight[:, start:stop]  # a view: updated in place
        ub = u[start:stop, start:stop]
        diag = ub.diagonal()
        errors = torch.empty_like(block)
        rule.begin_block(start, block, diag)
        for local in range(stop - start):
            value = rule.column(start + local, local, block, diag)  # a new tensor: no clone
            error = (block[:, local] - value).div_(diag[local])
            block[:, local + 1 :].addr_(error, ub[local, local + 1 :], alpha=-1.0)
            block[:, local] = value
            errors[:, local] = error
        if stop < cols:
            weight[:, stop:].addmm_(errors, u[start:stop, stop:], alpha=-1.0)
    return weight
