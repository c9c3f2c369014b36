"""``export(format="semi-structured")``: 2:4 Linear layers on sparse tensor cores (METHODS.md §9).

On a CUDA GPU with compute capability >= 8.0, every ``nn.Linear`` whose weight satisfies 2:4
along the input axis, has a supported dtype (fp16/bf16; fp32 models are cast to fp16) and fits
the kernel's shape limits is converted with ``torch.sparse.to_sparse_semi_structured`` and its
output compared with the masked dense layer on a random batch. Layers that fail any check stay
dense, with the reason in the report.

What is written: ``path`` holds ``{"format", "dtype", "state_dict", "semi_structured"}`` — the
dense masked weights (portable, loadable anywhere) and the names of the layers to convert;
:func:`load_semi_structured` re-converts them on the GPU (compression is cheap and the sparse
subclass is not a stable serialisation format). A JSON report sits next to it
(``<stem>.report.json``). Without a capable GPU nothing is written and a clear error is raised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compressor.plugin_api import (
    CompressorError,
    EvaluationContext,
    Exporter,
    TypeConfig,
    atomic_save,
    atomic_write_json,
    hookimpl,
    load_checkpoint,
    nm_violations,
)

FORMAT = "semi-structured"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)
# Used when torch's own table cannot be read (both backends accept multiples of these).
FALLBACK_MIN_SHAPE = {torch.float16: (32, 64), torch.bfloat16: (32, 64)}


@dataclass
class LayerResult:
    """One Linear layer's outcome: converted (with its numerical error) or skipped (why)."""

    name: str
    shape: tuple[int, int]
    converted: bool
    reason: str = ""
    max_abs_error: float | None = None


def cuda_capability() -> tuple[int, int] | None:
    """The current GPU's compute capability, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


def require_capable_gpu() -> None:
    """Raise the user-facing error unless sparse tensor cores are available."""
    capability = cuda_capability()
    if capability is None:
        raise CompressorError(
            "semi-structured export needs a CUDA GPU with compute capability >= 8.0; "
            "this machine has none — nothing was written"
        )
    if capability < MIN_CAPABILITY:
        raise CompressorError(
            "semi-structured export needs a CUDA GPU with compute capability >= 8.0; "
            f"this GPU has {capability[0]}.{capability[1]} — nothing was written"
        )


def min_shape(dtype: torch.dtype) -> tuple[int, int]:
    """``(rows, cols)`` the weight's shape must be a multiple of, for the backend torch uses."""
    try:
        from torch.sparse import (
            SparseSemiStructuredTensor,
            SparseSemiStructuredTensorCUSPARSELT,
            SparseSemiStructuredTensorCUTLASS,
        )

        cls = (
            SparseSemiStructuredTensorCUTLASS
            if SparseSemiStructuredTensor._FORCE_CUTLASS
            else SparseSemiStructuredTensorCUSPARSELT
        )
        limits = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
        return int(limits.sparse_min_rows), int(limits.sparse_min_cols)
    except (ImportError, AttributeError, KeyError):
        return FALLBACK_MIN_SHAPE[dtype]


def ineligible_reason(weight: torch.Tensor, dtype: torch.dtype) -> str:
    """Why a Linear weight cannot be converted (empty string when it can); no GPU needed."""
    out_features, in_features = weight.shape
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported (fp16/bf16 only)"
    rows, cols = min_shape(dtype)
    if out_features % rows or in_features % cols:
        return (
            f"shape {out_features}x{in_features} is not a multiple of the kernel's "
            f"minimum {rows}x{cols} for {dtype}"
        )
    bad = nm_violations(weight, 2, 4)
    if bad:
        return f"weight is not 2:4 along the input axis ({bad} groups hold more than 2 non-zeros)"
    return ""


def export_dtype(model: nn.Module) -> tuple[torch.dtype, str]:
    """fp16/bf16 models keep their dtype; anything else is cast to fp16 (and reported)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and next(iter(dtypes)) in SUPPORTED_DTYPES:
        return next(iter(dtypes)), ""
    names = ", ".join(sorted(str(d) for d in dtypes)) or "none"
    return torch.float16, f"cast from {names} to torch.float16"


@torch.no_grad()
def convert_linears(
    model: nn.Module, *, check_batch: int = 64, rtol: float = 1e-2, seed: int = 0
) -> list[LayerResult]:
    """Convert eligible Linear layers of a CUDA fp16/bf16 ``model`` in place; report each."""
    from torch.sparse import to_sparse_semi_structured

    generator = torch.Generator(device="cuda").manual_seed(seed)
    results: list[LayerResult] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        reason = ineligible_reason(weight, weight.dtype)
        if reason:
            results.append(LayerResult(name, shape, False, reason))
            continue
        x = torch.randn(
            check_batch, shape[1], device=weight.device, dtype=weight.dtype, generator=generator
        )
        reference = module(x).float()
        dense = module.weight
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(dense.contiguous()), False)
            out = module(x).float()
        except RuntimeError as exc:  # a backend limit torch knows and we did not
            module.weight = dense
            results.append(LayerResult(name, shape, False, f"conversion failed: {exc}"))
            continue
        error = float((out - reference).abs().max().item())
        scale = float(reference.abs().max().item()) or 1.0
        if error > rtol * scale:
            module.weight = dense
            results.append(
                LayerResult(
                    name, shape, False, f"output mismatch {error:.3g} > {rtol:g}·{scale:.3g}"
                )
            )
            continue
        results.append(LayerResult(name, shape, True, max_abs_error=error))
    return results


def report_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.report.json")


def export_semi_structured(model: nn.Module, path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Check, convert and write; returns the path written and the report (also saved as JSON)."""
    require_capable_gpu()
    path = Path(path)
    dtype, cast = export_dtype(model)
    work = copy.deepcopy(model).eval().to(device="cuda", dtype=dtype)
    results = convert_linears(work)
    converted = [r.name for r in results if r.converted]
    dense = copy.deepcopy(model).eval().to(dtype=dtype)
    report: dict[str, Any] = {
        "format": FORMAT,
        "path": str(path),
        "dtype": str(dtype),
        "cast": cast,
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, cuda_capability() or ())),
        "converted": converted,
        "skipped": {r.name: r.reason for r in results if not r.converted},
        "layers": [asdict(r) for r in results],
    }
    atomic_save(
        {
            "format": FORMAT,
            "dtype": str(dtype),
            "state_dict": {k: v.cpu() for k, v in dense.state_dict().items()},
            "semi_structured": converted,
        },
        path,
    )
    atomic_write_json(report, report_path(path))
    return path, report


@torch.no_grad()
def load_semi_structured(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an export into ``model`` (same architecture) on CUDA and convert the listed layers."""
    from torch.sparse import to_sparse_semi_structured

    require_capable_gpu()
    data = load_checkpoint(path)
    if data.get("format") != FORMAT:
        raise CompressorError(f"{path} is not a semi-structured export")
    dtype = getattr(torch, data["dtype"].removeprefix("torch."))
    model = model.to(device="cuda", dtype=dtype).eval()
    model.load_state_dict(data["state_dict"])
    modules = dict(model.named_modules())
    for name in data["semi_structured"]:
        linear = modules[name]
        linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.contiguous()), False)
    return model


class SemiStructuredExporter(Exporter):
    """``--format semi-structured``: 2:4 Linear layers on sparse tensor cores (CUDA only)."""

    class Config(TypeConfig):
        format: Literal["semi-structured"] = "semi-structured"

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        written, _ = export_semi_structured(model, path)
        return written


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(SemiStructuredExporter)
