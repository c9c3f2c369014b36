"""Weight quantization: round-to-nearest (``quant``) and GPTQ (``gptq``) (METHODS.md §10).

**The grid.** Symmetric, per output channel or per group of ``group_size`` consecutive GEMM
inputs (the ``[out, k·in]`` view of :mod:`.calibration`: for a convolution whose input count is
a multiple of G, inputs at one kernel position). With ``qmax = 2^(k-1) − 1`` and ``a`` the
group's largest ``|w|``: ``scale = a / qmax``, ``q = clamp(round(w / scale), −qmax, qmax)``
(round half to even), ``ŵ = q·scale``; weights stay float, on the grid. Codes ``±qmax`` are
written as ``±a`` itself (``q·scale`` can miss ``a`` by an ulp in float64), so the largest
``|ŵ|`` of a group is exactly ``a``: re-quantizing gives the same scale and the same codes, the
projection is idempotent bit for bit, and an export can recover codes and scales from the
weights alone (``scale`` is computed in float64 from the float ``a``). Zeros quantize to zero,
so quantizing a pruned model keeps its zeros (``a`` is the largest *kept* weight).

**``grid: compressed-tensors``** quantizes instead on the grid the compressed-tensors format
stores (its ``calculate_qparams`` and ``_quantize``/``_dequantize``, symmetric int): codes
``−2^(k-1) .. 2^(k-1) − 1``, ``scale = a / ((2^k − 1) / 2)`` and ``ŵ = float(q)·scale``, both in
the weight's dtype — exactly what compressed-tensors decompresses, so ``compressor export RUN
--format compressed-tensors`` writes the run's weights unchanged. This grid is not symmetric
(the largest positive weight of a group rounds to ``2^(k-1) − 1``) and has no pinned entry, so
re-quantizing may move a value (the scale follows the group's largest ``|ŵ|``); the exporter
recovers each group's scale from the weights and checks every value.

**``quant``** (RTN) needs no data. It prunes nothing: ``fixed_sparsity()`` is 0, so wherever an
operator takes a target (``oneshot``, the one-shot evaluator, CrAM) it runs once, "at 0";
entries that round to zero are what its mask (non-zeros) leaves out.

**``gptq``** (Frantar et al. 2022, arXiv 2210.17323): the OBS sweep of :mod:`.obs` with the
quantizer in place of SparseGPT's mask, on the same Hessian ``H = 2·X·Xᵀ + λI``. Per-channel
scales come from the layer's weights before the sweep (as the released code does); with
groups, each group's scale from its current weights when the sweep reaches its first column
(blocks are made multiples of the group size so those values are fully updated). Zeros of
the input stay zero (pruned weights are masked at every column, as SparseGPT's joint mode
does). One deliberate difference to the released code: the entry that defines a group's
scale (its largest ``|w|``) is set to ``±a`` when its column is reached, instead of being
rounded after the updates moved it, so the result is exactly on an RTN grid (idempotent, and
exportable from the weights); the OBS update compensates that entry's error like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    CompressionContext,
    Operator,
    OperatorConfig,
    Target,
    ct_dequantize,
    ct_quantize,
    ct_range,
    ct_round,
    ct_scale,
    hookimpl,
)
from compressor_plugins.posttrain.calibration import (
    CalibrationConfig,
    DataAwareOperator,
    LayerStatistics,
    from_gemm,
    gemm_view,
)
from compressor_plugins.posttrain.obs import inverse_hessian_factor, obs_sweep

__all__ = [
    "GPTQ",
    "Grid",
    "Quant",
    "ct_dequantize",
    "ct_quantize",
    "ct_range",
    "ct_scale",
    "dequantize",
    "expand_groups",
    "gptq_layer",
    "group_absmax",
    "qmax",
    "quantize",
    "rtn",
]

Bits = Field(8, ge=2, le=8, description="k: bits per weight (2..8)")
GroupSize = Field(None, gt=0, description="G: one scale per G consecutive inputs (None: per row)")
Grid: TypeAlias = Literal["symmetric", "compressed-tensors"]
GridField: Any = Field(
    "symmetric",
    description="symmetric: ±(2^(k-1)−1) codes, ±a exact; compressed-tensors: the grid that "
    "format stores (codes −2^(k-1)..2^(k-1)−1, scale a/((2^k−1)/2)), so its export is exact",
)


def qmax(bits: int) -> int:
    """``2^(k-1) − 1``: the largest code of a symmetric k-bit grid."""
    return 2 ** (bits - 1) - 1


def group_absmax(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``[rows, groups]``: the largest ``|w|`` of each group of ``group_size`` columns."""
    rows, cols = weight.shape
    if group_size is None or group_size >= cols:
        return weight.abs().amax(dim=1, keepdim=True)
    pad = (-cols) % group_size
    padded = torch.nn.functional.pad(weight.abs(), (0, pad))  # zeros never change a max
    return padded.view(rows, -1, group_size).amax(dim=2)


def expand_groups(per_group: torch.Tensor, group_size: int | None, cols: int) -> torch.Tensor:
    """``[rows, groups]`` -> ``[rows, cols]``: each group's value on each of its columns."""
    if per_group.shape[1] == 1:
        return per_group.expand(-1, cols)
    assert group_size is not None
    return per_group.repeat_interleave(group_size, dim=1)[:, :cols]


def quantize(weight: torch.Tensor, absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of ``weight`` on the grid of ``absmax`` (broadcastable), as int8."""
    top = qmax(bits)
    scale = absmax.double() / top
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight.double() / safe).clamp_(-top, top).to(torch.int8)


def dequantize(
    codes: torch.Tensor, absmax: torch.Tensor, bits: int, dtype: torch.dtype
) -> torch.Tensor:
    """``q·scale`` in ``dtype`` (codes ``±qmax`` exactly ``±absmax``); see module doc."""
    top = qmax(bits)
    a = absmax.double()
    value = codes.double() * (a / top)
    value = torch.where(codes.abs() == top, torch.sign(codes.double()) * a, value)
    return value.to(dtype)


def rtn(
    weight: torch.Tensor, bits: int, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of a GEMM weight ``[rows, cols]``: ``(ŵ, codes, absmax per group)``."""
    absmax = group_absmax(weight, group_size)
    full = expand_groups(absmax, group_size, weight.shape[1])
    codes = quantize(weight, full, bits)
    return dequantize(codes, full, bits, weight.dtype), codes, absmax


def round_to_grid(
    weight: torch.Tensor, bits: int, group_size: int | None, grid: Grid
) -> torch.Tensor:
    """RTN of a GEMM weight on ``grid``: the quantized values only."""
    if grid == "symmetric":
        return rtn(weight, bits, group_size)[0]
    scale = expand_groups(
        ct_scale(group_absmax(weight, group_size), bits), group_size, weight.shape[1]
    )
    return ct_round(weight, scale, bits)


def quant_label(prefix: str, bits: int, group_size: int | None) -> str:
    return f"{prefix} int{bits}" + (f" g{group_size}" if group_size else "")


def check_no_sparsity(sparsity: float) -> None:
    """Quantizers are asked for sparsity 0 only (their fixed sparsity)."""
    if sparsity != 0.0:
        raise ValueError(f"quantization prunes nothing: sparsity must be 0, not {sparsity:g}")


class Quant(Operator):
    """``{kind: quant, bits: 4, group_size: 128}``: RTN onto the k-bit grid (no data)."""

    class Config(OperatorConfig):
        kind: Literal["quant"]
        bits: int = Bits
        group_size: int | None = GroupSize
        grid: Grid = GridField

    def fixed_sparsity(self) -> float:
        return 0.0

    def label(self, sparsity: float | None) -> str:
        return quant_label("rtn", self.config.bits, self.config.group_size)

    def compute_project(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        check_no_sparsity(sparsity)
        out = {}
        for name, stored in weights.items():
            oriented = self.out_in(name, stored.detach())
            c = self.config
            value = round_to_grid(gemm_view(oriented), c.bits, c.group_size, c.grid)
            out[name] = self.out_in(name, from_gemm(value, oriented)).contiguous()
        return out


class GroupQuantizer:
    """The GPTQ column rule: the grid of each row (group), zeros kept, the max entry pinned."""

    def __init__(
        self,
        weight: torch.Tensor,
        bits: int,
        group_size: int | None,
        keep: torch.Tensor,
        grid: Grid = "symmetric",
    ) -> None:
        self.bits, self.group_size, self.keep, self.grid = bits, group_size, keep, grid
        self.dense = bool(keep.all())  # nothing to keep at zero: skip the per-column select
        rows = weight.shape[0]
        self.absmax = torch.zeros(rows, dtype=weight.dtype, device=weight.device)
        self.pin = torch.full((rows,), -1, dtype=torch.long, device=weight.device)
        self.sign = torch.zeros(rows, dtype=weight.dtype, device=weight.device)
        self.scale = torch.ones(rows, dtype=weight.dtype, device=weight.device)
        if group_size is None:
            self._grid(weight, 0)

    def _grid(self, part: torch.Tensor, first: int) -> None:
        """Scale and pinned entry of each row from ``part`` (columns from ``first``)."""
        kept = torch.where(self.keep[:, first : first + part.shape[1]], part, 0.0)
        self.absmax, where = kept.abs().max(dim=1)
        self.pin = where + first
        self.sign = torch.sign(kept.gather(1, where[:, None]).squeeze(1))
        if self.grid == "compressed-tensors":  # once per group, not per column
            self.scale = ct_scale(self.absmax, self.bits)

    def begin_block(self, start: int, block: torch.Tensor, diag: torch.Tensor) -> None:
        return None

    def column(self, j: int, local: int, block: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        g = self.group_size
        if g is not None and j % g == 0:
            self._grid(block[:, local : local + g], j)
        w = block[:, local]
        if self.grid == "compressed-tensors":  # no pinned entry: the exporter finds the scale
            value = ct_round(w, self.scale, self.bits)
        else:
            value = dequantize(quantize(w, self.absmax, self.bits), self.absmax, self.bits, w.dtype)
            value = torch.where(self.pin == j, self.sign * self.absmax, value)
        if self.dense:
            return value
        return torch.where(self.keep[:, j], value, torch.zeros_like(value))


def gptq_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    inplace: bool = False,
    grid: Grid = "symmetric",
) -> torch.Tensor:
    """GPTQ on one GEMM weight ``[rows, cols]``; zeros stay zero. Returns ``weight`` itself,
    updated, with ``inplace``, else a new tensor."""
    w = weight if inplace else weight.clone()
    keep = w != 0
    if group_size is not None:  # every group inside one block, read fully updated
        block_size = max(group_size, block_size - block_size % group_size)
    factor = inverse_hessian_factor(hessian, damp).to(w.device)
    obs_sweep(w, factor, block_size, GroupQuantizer(w, bits, group_size, keep, grid))
    return w


class GPTQ(DataAwareOperator):
    """``{kind: gptq, bits: 4}``: GPTQ from calibration data (see module doc)."""

    class Config(OperatorConfig):
        kind: Literal["gptq"]
        bits: int = Bits
        group_size: int | None = GroupSize
        block_size: int = Field(128, gt=0, description="columns per lazy-update block")
        damp: float = Field(0.01, gt=0, description="λ = damp · mean(diag H)")
        partial_groups: Literal["partial", "skip", "error"] = Field(
            "partial",
            description="layers whose inputs are not a multiple of group_size: a smaller last "
            "group (partial), dense with a warning (skip), or a config error naming them",
        )
        grid: Grid = GridField
        calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)

    STATISTIC = "hessian"

    def bind(
        self, model: nn.Module, targets: list[Target], context: CompressionContext | None = None
    ) -> None:
        super().bind(model, targets, context)
        if self.config.group_size is not None:
            label = quant_label("gptq", self.config.bits, self.config.group_size)
            self.warn_skipped(self.targets, self.config.group_size, label)

    def fixed_sparsity(self) -> float:
        return 0.0

    def label(self, sparsity: float | None) -> str:
        return quant_label("gptq", self.config.bits, self.config.group_size)

    def compute_project(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        check_no_sparsity(sparsity)
        return {name: value for name, (value, _) in self.compress(weights, sparsity).items()}

    def compress_layer(
        self, target: Target, weight: torch.Tensor, stats: LayerStatistics, sparsity: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert stats.value is not None
        c = self.config
        value = gptq_layer(
            weight,
            stats.value,
            c.bits,
            group_size=c.group_size,
            block_size=c.block_size,
            damp=c.damp,
            grid=c.grid,
            inplace=True,  # weight is the driver's own copy
        )
        return value, value != 0


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(Quant)
    register(GPTQ)
