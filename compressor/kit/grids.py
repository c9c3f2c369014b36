"""compressed-tensors' symmetric integer grid, read from its ``calculate_qparams`` and
``_quantize``/``_dequantize``: shared by ``quant``/``gptq`` (``grid: compressed-tensors``) and
the ``compressed-tensors`` exporter, so what is trained is exactly what the format stores."""

from __future__ import annotations

import torch


def ct_range(bits: int) -> tuple[int, int]:
    """compressed-tensors' integer range for k-bit int: ``−2^(k-1) .. 2^(k-1) − 1``."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def ct_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """compressed-tensors' symmetric scale ``a / ((2^k − 1) / 2)``, in ``absmax``'s dtype."""
    return absmax / torch.tensor((2**bits - 1) / 2, dtype=absmax.dtype, device=absmax.device)


def ct_quantize(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``clamp(round(w / scale))`` as compressed-tensors computes them, as int8."""
    low, high = ct_range(bits)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / safe).clamp_(low, high).to(torch.int8)


def ct_dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``float(q)·scale`` in ``dtype``: compressed-tensors' decompression, bit for bit."""
    return codes.to(dtype) * scale.to(dtype)


def ct_round(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The grid value of ``weight``: ``ct_dequantize(ct_quantize(weight, scale, bits), scale,
    weight.dtype)`` in one pass, without the int8 round trip (the codes are integers, exact in
    ``weight``'s dtype). GPTQ calls it once per column."""
    low, high = ct_range(bits)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / safe).clamp_(low, high).mul_(scale.to(weight.dtype))
