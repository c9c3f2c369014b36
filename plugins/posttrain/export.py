"""Realised size of quantized models: the ``quantized`` export format and evaluator (METHODS.md §9, §10).

**Export** (``compressor export RUN --format quantized``). Every selected weight (Linear and
Conv by default) is stored as integer codes plus one float scale source per output row or
group, on the grid of :mod:`.quant`: codes ``q`` and each group's ``a = max|w|`` (the weight's
own dtype, exact; ``scale = a / (2^(k-1) − 1)`` in float64, and ``±qmax`` decodes to ``±a``),
so a model quantized by ``quant`` or ``gptq`` is reproduced bit for bit by
:func:`load_quantized`. ``bits: null`` (the default) picks, per tensor, the smallest k in 2..8
at which the weights already are exactly on the grid, and quantizes at ``fallback_bits`` (8)
where none is (that tensor is then *lossy*, and the report says so). Codes are int8 for k > 4
and packed two per byte (4-bit nibbles) for k <= 4. A sparse tensor is stored as a bitmap of
its non-zeros plus the codes of the kept weights when that is smaller (``n + k·kept < k·n``).
Everything else (biases, BatchNorm, excluded weights) stays float.

Stored bits of a quantized tensor: ``k·n`` (dense) or ``n + k·kept`` (bitmap), plus the bits
of its scale sources (32 per group for float32 weights), as written; the file adds torch's
container overhead. **Latency** is that of the dense float model: no integer kernel runs (the
codes are dequantized to float to compute), so nothing is timed and the evaluator says so.

The ``quantized`` evaluator writes nothing: it builds the same payload in memory and reports
its size against the float model's.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    Column,
    CompressorError,
    Evaluation,
    EvaluationContext,
    Evaluator,
    Exporter,
    SelectionConfig,
    TypeConfig,
    atomic_save,
    hookimpl,
    load_checkpoint,
    out_in,
    pack_bits,
    select,
    unpack_bits,
)
from compressor_plugins.posttrain.calibration import from_gemm, gemm_view
from compressor_plugins.posttrain.quant import dequantize, expand_groups, rtn

__all__ = [
    "QuantizedExporter",
    "QuantizedSize",
    "load_quantized",
    "pack_bits",
    "pack_codes",
    "quantized_payload",
    "unpack_bits",
    "unpack_codes",
]

FORMAT = "quantized"
LATENCY = "dense: no integer kernel runs (codes are dequantized to float), so it is not timed"


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """1-D int8 codes as bytes: as they are for k > 4, two 4-bit nibbles a byte for k <= 4."""
    flat = codes.flatten().to(torch.int16)
    if bits > 4:
        return flat.to(torch.int8).view(torch.uint8).clone()
    nibbles = (flat + 8).to(torch.uint8)  # -7..7 -> 1..15
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    pairs = nibbles.view(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` int8 codes."""
    if bits > 4:
        return packed.view(torch.int8)[:count].clone()
    low = (packed & 0xF).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    return (torch.stack([low, high], dim=1).flatten()[:count] - 8).to(torch.int8)


def _lossless_bits(matrix: torch.Tensor, group_size: int | None) -> int | None:
    """The smallest k in 2..8 at which ``matrix`` is exactly on its k-bit grid, else None."""
    for bits in range(2, 9):
        value, _, _ = rtn(matrix, bits, group_size)
        if torch.equal(value, matrix):
            return bits
    return None


def _encode(
    matrix: torch.Tensor, bits: int, group_size: int | None
) -> tuple[dict[str, Any], int, bool]:
    """One GEMM matrix as stored entries; also its stored bits and whether it is lossless."""
    value, codes, absmax = rtn(matrix, bits, group_size)
    lossless = torch.equal(value, matrix)
    n = codes.numel()
    kept = codes != 0
    count = int(kept.sum())
    entry: dict[str, Any] = {"bits": bits, "group_size": group_size, "absmax": absmax.cpu()}
    if n + bits * count < bits * n:
        entry["mask"] = pack_bits(kept).cpu()
        entry["codes"] = pack_codes(codes[kept], bits).cpu()
        payload = n + bits * count
    else:
        entry["mask"] = None
        entry["codes"] = pack_codes(codes, bits).cpu()
        payload = bits * n
    return entry, payload + absmax.numel() * absmax.element_size() * 8, lossless


def quantized_payload(
    model: nn.Module, config: Any
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """What the exporter writes, and a per-tensor report (bits, stored bits, lossless)."""
    targets = select(model, config)
    if not targets:
        raise CompressorError("the quantized export selects no tensors (modules/include/exclude)")
    names = {t.name for t in targets}
    tensors: dict[str, Any] = {}
    report: dict[str, dict[str, Any]] = {}
    for target in targets:
        oriented = out_in(target.param.detach(), target.transposed)
        matrix = gemm_view(oriented)
        bits = config.bits
        if bits is None:
            bits = _lossless_bits(matrix, config.group_size) or config.fallback_bits
        entry, stored, lossless = _encode(matrix, bits, config.group_size)
        entry.update(
            shape=list(target.param.shape),
            oriented=list(oriented.shape),
            transposed=target.transposed,
            dtype=str(target.param.dtype).removeprefix("torch."),
        )
        tensors[target.name] = entry
        report[target.name] = {
            "bits": bits,
            "weights": matrix.numel(),
            "stored_bits": stored,
            "sparse_storage": entry["mask"] is not None,
            "lossless": lossless,
        }
    rest = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in names}
    payload = {"format": FORMAT, "version": 1, "quantized": tensors, "float": rest}
    return payload, report


def load_quantized(path: str | Path) -> dict[str, torch.Tensor]:
    """The float state dict of a ``quantized`` export (the weights it reproduces)."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressorError(f"{path} is not a '{FORMAT}' export")
    state = dict(payload["float"])
    for name, entry in payload["quantized"].items():
        rows, cols = entry["oriented"][0], 1
        for size in entry["oriented"][1:]:
            cols *= size
        n, bits = rows * cols, entry["bits"]
        if entry["mask"] is not None:
            kept = unpack_bits(entry["mask"], n)
            codes = torch.zeros(n, dtype=torch.int8)
            codes[kept] = unpack_codes(entry["codes"], bits, int(kept.sum()))
        else:
            codes = unpack_codes(entry["codes"], bits, n)
        codes = codes.view(rows, cols)
        absmax = expand_groups(entry["absmax"], entry["group_size"], cols)
        matrix = dequantize(codes, absmax, bits, getattr(torch, entry["dtype"]))
        like = torch.empty(entry["oriented"], dtype=matrix.dtype)
        oriented = from_gemm(matrix, like)
        state[name] = out_in(oriented, entry["transposed"]).contiguous()
    return state


def serialized_bytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


class QuantizedConfig(TypeConfig, SelectionConfig):
    bits: int | None = Field(
        None, ge=2, le=8, description="k for every tensor; None: the smallest lossless k"
    )
    fallback_bits: int = Field(8, ge=2, le=8, description="k where no k <= 8 is lossless")
    group_size: int | None = Field(None, gt=0, description="one scale per G inputs (None: per row)")


class QuantizedExporter(Exporter):
    """``compressor export RUN --format quantized``: integer codes and scales (module doc)."""

    class Config(QuantizedConfig):
        format: Literal["quantized"] = "quantized"

    suffix = ".pt"

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        payload, report = quantized_payload(model, self.config)
        payload["report"] = report
        atomic_save(payload, path)
        return path


class QuantizedSize(Evaluator):
    """``evaluate: {quantized: {}}``: the stored size of the ``quantized`` export."""

    class Config(QuantizedConfig):
        name: Literal["quantized"] = "quantized"

    def run(self, context: EvaluationContext, model: nn.Module) -> Evaluation:
        payload, report = quantized_payload(model, self.config)
        weights = sum(r["weights"] for r in report.values())
        stored = sum(r["stored_bits"] for r in report.values())
        file_bytes = serialized_bytes(payload)
        float_bytes = serialized_bytes(model.state_dict())
        lossless = all(r["lossless"] for r in report.values())
        metrics = {
            "stored_kb": file_bytes / 1024,
            "bits_per_weight": stored / weights,
            "ratio": float_bytes / file_bytes,
            "lossless": float(lossless),
        }
        return Evaluation(
            metrics=metrics,
            columns=[
                Column("stored_kb", "int KB", digits=0, order=0),
                Column("bits_per_weight", "bits/w", digits=2, order=1),
            ],
            legend=(
                "int KB, bits/w: file size of the quantized export (integer codes, scales, "
                "the rest float) and stored bits per quantized weight, scales included; "
                "latency is the dense model's (no integer kernel runs)"
            ),
            details={
                "file_bytes": file_bytes,
                "float_bytes": float_bytes,
                "stored_bits": stored,
                "weights": weights,
                "lossless": lossless,
                "tensors": report,
                "latency": LATENCY,
            },
        )


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(QuantizedExporter)


@hookimpl
def register_evaluators(register: Callable[[type], None]) -> None:
    register(QuantizedSize)
