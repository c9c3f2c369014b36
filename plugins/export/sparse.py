"""``sparse`` export: a compact file for masked models that loads back bit for bit.

One safetensors file. Each floating tensor is stored in the smallest of three encodings:

* ``nm`` (N:M along an axis: every group of M consecutive entries holds at most N non-zeros):
  the N kept values per group (``<key>.values``, ``[groups, N]``) and their in-group positions
  packed at ``ceil(log2 M)`` bits each (``<key>.indices``) — the layout sparse kernels read;
  chosen when a pattern with N/M <= 1/2 holds and costs at most 1/16 more than the bitmask
  (a 2:4 tensor costs the same either way; 90% unstructured may also fit 4:8, at 5× the size);
* ``bitmask``: one bit per entry (packed 8 a byte, ``<key>.mask``) and the kept values in
  order (``<key>.values``), when smaller than dense;
* ``dense`` otherwise (and for every non-float tensor).

Kept entries are the non-zero ones. Masking by multiplication leaves ``-0.0`` where a weight
was negative, so when a tensor holds any, the signs of its zeros are stored too (one bit per
zero, ``<key>.signs``): :func:`load_sparse` returns a state dict equal to the model's to the
last bit, signs of zeros included. Tensors that share storage (tied embeddings)
are stored once. The JSON index (names, shapes, dtypes, encodings) is the file's safetensors
metadata under ``"compressor-sparse"``; keys inside the file are ``t0``, ``t1``, ... in index
order, so no parameter name can collide with a suffix.

Load it with ``compressor_plugins.export.sparse.load_sparse(path)`` (needs ``safetensors``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compressor.plugin_api import (
    CompressorError,
    EvaluationContext,
    Exporter,
    TypeConfig,
    atomic_write_text,
    hookimpl,
    pack_bits,
    require_package,
    staged,
    unpack_bits,
)

FORMAT = "compressor-sparse"
VERSION = 1
PATTERNS = ((1, 2), (1, 4), (2, 4), (1, 8), (2, 8), (4, 8))  # (N, M) tried, N/M <= 1/2
NM_SLACK = 1 + 1 / 16  # N:M is kept over a bitmask up to this size ratio (module doc)


def safetensors_torch() -> Any:
    return require_package("safetensors.torch", "sparse", "--format sparse")


def negative_zeros(tensor: torch.Tensor) -> torch.Tensor:
    """Per zero entry of ``tensor`` (flat order): is it ``-0.0``?"""
    flat = tensor.flatten()
    return torch.signbit(flat[flat == 0])


def with_zero_signs(tensor: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """``tensor`` with its zeros given the stored signs (inverse of :func:`negative_zeros`)."""
    flat = tensor.flatten().clone()
    zeros = flat == 0
    negative = unpack_bits(packed, int(zeros.sum()))
    flat[zeros] = torch.where(negative, -0.0, 0.0).to(flat.dtype)
    return flat.view(tensor.shape)


def _to_axis_last(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    return tensor.movedim(axis, -1)


def pack_small(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative ints below ``2^bits`` as a bitstream (lowest bit first), uint8."""
    planes = (values.flatten().to(torch.int64)[:, None] >> torch.arange(bits)) & 1
    return pack_bits(planes.bool())


def unpack_small(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    planes = unpack_bits(packed, count * bits).view(count, bits).to(torch.int64)
    return (planes << torch.arange(bits)).sum(dim=1)


def _nm_fits(kept: torch.Tensor, keep: int, group: int, axis: int) -> bool:
    if kept.dim() < 1 or kept.shape[axis] % group:
        return False
    groups = _to_axis_last(kept, axis).reshape(-1, group)
    return bool((groups.sum(dim=1) <= keep).all())


def encode_nm(
    tensor: torch.Tensor, keep: int, group: int, axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [groups, N], packed in-group indices)`` of an N:M tensor along ``axis``."""
    moved = _to_axis_last(tensor, axis).contiguous()
    groups = moved.reshape(-1, group)
    flags = (groups != 0).to(torch.int8)
    order = torch.sort(flags, dim=1, descending=True, stable=True).indices[:, :keep]
    index = torch.sort(order, dim=1).values  # kept first, then +0.0 fillers; ascending
    values = groups.gather(1, index)
    return values.contiguous(), pack_small(index, max(1, math.ceil(math.log2(group))))


def decode_nm(entry: Mapping[str, Any], values: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    shape, axis, keep, group = entry["shape"], entry["axis"], entry["keep"], entry["group"]
    moved_shape = list(shape)
    moved_shape.append(moved_shape.pop(axis))
    count = values.shape[0]
    index = unpack_small(packed, max(1, math.ceil(math.log2(group))), count * keep)
    groups = torch.zeros(count, group, dtype=values.dtype)
    groups.scatter_(1, index.view(count, keep), values)
    return groups.reshape(moved_shape).movedim(-1, axis).contiguous()


def _best_nm(tensor: torch.Tensor) -> tuple[float, tuple[int, int, int]] | None:
    """The bytes and ``(N, M, axis)`` of the smallest N:M layout ``tensor`` fits, or None."""
    if tensor.dim() < 1:
        return None
    kept = tensor != 0
    best: tuple[float, tuple[int, int, int]] | None = None
    for axis in sorted({tensor.dim() - 1, min(1, tensor.dim() - 1), 0}):
        for keep, group in PATTERNS:
            if _nm_fits(kept, keep, group, axis):
                groups = tensor.numel() // group
                size = groups * keep * (tensor.element_size() + math.ceil(math.log2(group)) / 8)
                if best is None or size < best[0]:
                    best = (size, (keep, group, axis))
    return best


def encode(name: str, tensor: torch.Tensor, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One tensor's index entry and its safetensors entries."""
    tensor = tensor.detach().cpu().contiguous()
    entry: dict[str, Any] = {
        "name": name,
        "key": key,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return {**entry, "encoding": "dense"}, {key: tensor}
    kept = (tensor != 0).flatten()
    count, size = int(kept.sum()), tensor.element_size()
    signs = negative_zeros(tensor)
    extra: dict[str, torch.Tensor] = {}
    if bool(signs.any()):
        extra[f"{key}.signs"] = pack_bits(signs)
    overhead = sum(t.numel() for t in extra.values())
    bitmask = tensor.numel() / 8 + count * size + overhead
    nm = _best_nm(tensor)
    if nm is not None and nm[0] + overhead <= bitmask * NM_SLACK:
        keep, group, axis = nm[1]
        values, indices = encode_nm(tensor, keep, group, axis)
        entry.update(encoding="nm", keep=keep, group=group, axis=axis)
        return entry, {f"{key}.values": values, f"{key}.indices": indices, **extra}
    if bitmask < tensor.numel() * size:
        entry["encoding"] = "bitmask"
        stored = {f"{key}.mask": pack_bits(kept), f"{key}.values": tensor.flatten()[kept]}
        return entry, {**stored, **extra}
    return {**entry, "encoding": "dense"}, {key: tensor}


def sparse_payload(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(index, tensors)`` of a state dict; tensors sharing storage are stored once."""
    entries: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        ident = (
            tensor.untyped_storage().data_ptr(),
            int(tensor.storage_offset()),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() and ident in seen:
            entries.append({"name": name, "alias": seen[ident]})
            continue
        seen[ident] = name
        entry, stored = encode(name, tensor, f"t{len(entries)}")
        entries.append(entry)
        tensors.update(stored)
    return {"format": FORMAT, "version": VERSION, "tensors": entries}, tensors


def save_sparse(state: Mapping[str, torch.Tensor], path: str | Path) -> dict[str, Any]:
    """Write ``state`` to ``path`` (atomically); returns the index."""
    st = safetensors_torch()
    path = Path(path)
    index, tensors = sparse_payload(state)
    blob = st.save(tensors, metadata={FORMAT: json.dumps(index)})
    with staged(path) as stage:
        (stage / path.name).write_bytes(blob)
    return index


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict of a ``sparse`` export, equal to the model's bit for bit."""
    st = safetensors_torch()
    safe_open = require_package("safetensors", "sparse", "load_sparse").safe_open
    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if FORMAT not in meta:
            raise CompressorError(f"{path} is not a '{FORMAT}' file (no index in its metadata)")
    index = json.loads(meta[FORMAT])
    stored = st.load_file(str(path))
    state: dict[str, torch.Tensor] = {}
    for entry in index["tensors"]:
        if "alias" in entry:
            state[entry["name"]] = state[entry["alias"]]
            continue
        key, shape = entry["key"], entry["shape"]
        dtype = getattr(torch, entry["dtype"])
        if entry["encoding"] == "dense":
            tensor = stored[key]
        elif entry["encoding"] == "nm":
            tensor = decode_nm(entry, stored[f"{key}.values"], stored[f"{key}.indices"])
        else:
            count = math.prod(shape)
            kept = unpack_bits(stored[f"{key}.mask"], count)
            tensor = torch.zeros(count, dtype=dtype)
            tensor[kept] = stored[f"{key}.values"]
            tensor = tensor.view(shape)
        if f"{key}.signs" in stored:
            tensor = with_zero_signs(tensor, stored[f"{key}.signs"])
        state[entry["name"]] = tensor
    return state


class SparseExporter(Exporter):
    """``--format sparse``: bitmask / N:M encoded safetensors (module doc)."""

    class Config(TypeConfig):
        format: Literal["sparse"] = "sparse"

    suffix = ".safetensors"
    requires = (("safetensors", "sparse"),)

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        index = save_sparse(model.state_dict(), path)
        report = {
            "format": FORMAT,
            "file_bytes": Path(path).stat().st_size,
            "encodings": {
                e["name"]: e.get("encoding", f"alias of {e.get('alias')}") for e in index["tensors"]
            },
        }
        atomic_write_text(json.dumps(report, indent=2) + "\n", Path(path).with_suffix(".json"))
        return Path(path)


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(SparseExporter)
