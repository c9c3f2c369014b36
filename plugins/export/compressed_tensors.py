"""``compressed-tensors`` export: quantized Linear layers as transformers and vLLM load them.

A Hugging Face model whose Linear weights sit on a compressed-tensors integer grid (a run of
``quant`` or ``gptq`` with ``grid: compressed-tensors``, or CrAM with such an operator) becomes
a ``save_pretrained`` folder in the compressed-tensors format, written with the
``compressed-tensors`` package: ``pack-quantized`` (int4 codes packed in int32) when every
quantized layer fits 4 bits, else ``int-quantized`` (int8), with ``quantization_config`` in
``config.json``. Everything else (embeddings, norms, the output head, Linear layers on no grid)
stays as it is, in the model's dtype.

Nothing is re-quantized. Per layer, each group's scale is *recovered* from the weights: with
``M`` the group's largest ``|w|`` and ``m`` its largest code, ``scale`` is one of the few floats
next to ``M / m``; a candidate is kept only if ``float(round(w / scale))·scale`` (the format's
own decompression) gives back every weight of the group bit for bit, with codes in
``−2^(k-1) .. 2^(k-1) − 1``. The scheme is the fewest bits (4, then 8) and the coarsest group
(a row, then 256 … 16 inputs) at which every quantized layer is exact. A model with no Linear
weight on such a grid is refused — the export never changes a weight. The folder written is
loaded back through transformers (which decompresses it on the first forward) and compared bit for bit with the
run's model before it is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compressor.plugin_api import (
    EvaluationContext,
    Exporter,
    InputError,
    TypeConfig,
    ct_range,
    hookimpl,
    require_package,
)
from compressor_plugins.export.hf import (
    hf_model,
    same_tensors,
    save_verified,
    transformers_offline,
)

FORMAT = "compressed-tensors"
BITS = (4, 8)  # what the format's kernels serve: pack-quantized int4, int-quantized int8
GROUPS: tuple[int | None, ...] = (None, 256, 128, 64, 32, 16)  # None: one scale per row
PACKING = {4: "pack-quantized", 8: "int-quantized"}
ULPS = 2  # float steps either side of M / m tried per candidate scale


def _neighbours(value: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """``value`` and the floats up to ``steps`` ulps either side of it."""
    out, up, down = [value], value, value
    for _ in range(steps):
        up = torch.nextafter(up, torch.full_like(up, float("inf")))
        down = torch.nextafter(down, torch.zeros_like(down))
        out += [up, down]
    return out


def recover_scales(weight: torch.Tensor, bits: int, group: int | None) -> torch.Tensor | None:
    """``[rows, groups]`` scales that reproduce ``weight`` exactly on compressed-tensors'
    k-bit grid with groups of ``group`` inputs (None: a row), or None if there are none."""
    rows, cols = weight.shape
    size = cols if group is None else group
    if cols % size:
        return None
    w = weight.detach().reshape(rows, cols // size, size)
    low, high = ct_range(bits)
    peak = w.abs().amax(dim=-1)
    found = peak == 0  # an all-zero group: codes 0 with any scale
    scale = torch.where(found, torch.ones_like(peak), torch.zeros_like(peak))
    for code in range(-low, 0, -1):  # the group's largest |code|, most likely first
        for candidate in _neighbours(peak / code, ULPS):
            safe = torch.where(candidate > 0, candidate, torch.ones_like(candidate))[..., None]
            codes = torch.round(w / safe).clamp_(low, high)
            exact = (codes.to(w.dtype) * safe == w).all(dim=-1) & ~found & (candidate > 0)
            scale = torch.where(exact, candidate, scale)
            found |= exact
        if bool(found.all()):
            return scale
    return None


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output embedding (``lm_head``), which stays float like the input one."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear layers the format may quantize: all but the output head (kept in float)."""
    head = output_head(model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    }


def layer_scheme(weight: torch.Tensor) -> tuple[int, int | None] | None:
    """The fewest bits and the coarsest group at which ``weight`` is exact, or None."""
    for bits in BITS:
        for group in GROUPS:
            if recover_scales(weight, bits, group) is not None:
                return bits, group
    return None


def plan(model: nn.Module) -> tuple[int, int | None, dict[str, torch.Tensor], list[str]]:
    """``(bits, group, scales per quantized layer, Linear layers left in float)``."""
    layers = quantizable_linears(model)
    schemes = {name: layer_scheme(module.weight) for name, module in layers.items()}
    on_grid = {name: s for name, s in schemes.items() if s is not None}
    if not on_grid:
        raise InputError(
            "no Linear weight of this model is on a 4- or 8-bit compressed-tensors grid, and "
            "the export never changes weights: quantize with quant or gptq and "
            "grid: compressed-tensors (bits 4 or 8)"
        )
    bits = max(s[0] for s in on_grid.values())
    groups = [s[1] for s in on_grid.values() if s[1] is not None]
    group = min(groups) if groups else None
    scales: dict[str, torch.Tensor] = {}
    dense = [name for name in layers if name not in on_grid]
    for name in on_grid:
        found = recover_scales(layers[name].weight, bits, group)
        if found is None:  # e.g. a row-wise layer whose width the finest group does not divide
            dense.append(name)
        else:
            scales[name] = found
    return bits, group, scales, dense


def ct_module(name: str) -> Any:
    """A compressed-tensors module, or the one-line error naming the extra."""
    return require_package(f"compressed_tensors.{name}", "compressed-tensors", f"--format {FORMAT}")


def quantization_config(bits: int, group: int | None, ignore: list[str]) -> Any:
    q = ct_module("quantization")
    weights = q.QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=True,
        strategy="channel" if group is None else "group",
        group_size=group,
    )
    return q.QuantizationConfig(
        config_groups={"group_0": q.QuantizationScheme(targets=["Linear"], weights=weights)},
        ignore=ignore,
        format=PACKING[bits],
    )


def head_names(model: nn.Module) -> list[str]:
    head = output_head(model)
    return [name for name, module in model.named_modules() if module is head]


@torch.no_grad()
def save_compressed(model: nn.Module, folder: Path) -> dict[str, Any]:
    """Write ``model`` (a transformers model on a grid) to ``folder``; returns the scheme."""
    inner = hf_model(model, FORMAT)
    bits, group, scales, dense = plan(inner)
    config = quantization_config(bits, group, sorted(dense) + head_names(inner))
    work = copy.deepcopy(inner).cpu().eval()
    ct_module("quantization").apply_quantization_config(work, config, show_progress=False)
    modules = dict(work.named_modules())
    for name, scale in scales.items():
        module = modules[name]
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
        module.weight_zero_point.data.zero_()
    compressor = ct_module("compressors").ModelCompressor(quantization_config=config)
    compressor.compress_model(work)

    def decompresses(loaded: Any) -> str | None:
        loaded.eval()(**loaded.dummy_inputs)  # the first forward decompresses (its hook)
        differ = same_tensors(inner.state_dict(), loaded.state_dict())
        if not differ:
            return None
        return (
            "the compressed-tensors folder does not decompress to the run's weights "
            f"({', '.join(differ[:3])})"
        )

    save_verified(
        work,
        folder,
        decompresses,
        cls=type(inner),
        after_save=lambda saved: compressor.update_config(str(saved)),
    )
    return {"bits": bits, "group_size": group, "quantized": sorted(scales), "dense": dense}


class CompressedTensorsExporter(Exporter):
    """``--format compressed-tensors``: int4/int8 Linear layers (module doc)."""

    class Config(TypeConfig):
        format: Literal["compressed-tensors"] = "compressed-tensors"

    suffix = ""
    requires = (
        ("transformers", "hf"),
        ("safetensors", "hf"),
        ("compressed_tensors", "compressed-tensors"),
    )

    def check(self, context: EvaluationContext, model: nn.Module) -> None:
        transformers_offline()
        plan(hf_model(model, FORMAT))  # refuses a model with nothing on a grid

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        save_compressed(model, Path(path))
        return Path(path)


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(CompressedTensorsExporter)
