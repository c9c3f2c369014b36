"""``pruned`` export: physically remove dead channels with Torch-Pruning (METHODS.md §9).

Dead channels are found and removed by the plugin API's :func:`export_pruned` (the channel
removal toolkit), which verifies the result against the masked model on random inputs (max
|diff| ≤ ``atol``, default 1e-5) before anything is written.

**File format** (loadable with ``torch.load(weights_only=True)``): a dict with the pruned
``state_dict``, the new sizes of every resized module (``in_channels``/``out_channels``/
``num_features``...), the input shape and, when exported from a session, the recipe's
``model`` spec and ``num_classes``. :func:`load_pruned` rebuilds the dense architecture (from
the spec, or a model you pass), shrinks its modules to the stored sizes and loads the weights:
no pickled code, so any torch version can read it. A JSON report (params, MACs, file size and
CPU latency at batch 1 and 64, pruned and dense) is written next to the file.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compressor.plugin_api import (
    PRUNED_FORMAT,
    DataInfo,
    EvaluationContext,
    Exporter,
    ExportError,
    Host,
    InputError,
    TypeConfig,
    atomic_save,
    atomic_write_json,
    compare_latency,
    example_input,
    export_pruned,
    hookimpl,
    load_checkpoint,
    masked_copy,
    max_diff,
    module_attributes,
    prune_transformer,
    serialized_bytes,
    token_probe,
    torch_threads,
    unit_groups,
)
from compressor_plugins.export.transformer import hf_config, hf_folder_for, write_hf_folder

FORMAT = PRUNED_FORMAT
LATENCY_REPEATS = 20  # alternating timed runs per model and batch size in the export report
LATENCY_THREADS = 1  # torch CPU threads while timing: one thread is reproducible on shared hosts

# Module attributes that follow a tensor's shape, per module kind.
_SIZE_ATTRS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Conv3d: ("in_channels", "out_channels", "groups"),
    nn.ConvTranspose1d: ("in_channels", "out_channels", "groups"),
    nn.ConvTranspose2d: ("in_channels", "out_channels", "groups"),
    nn.ConvTranspose3d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm3d: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
}


def module_sizes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The shape-bearing attributes of every module, for rebuilding."""
    sizes: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        attrs = _SIZE_ATTRS.get(type(module))
        if attrs:
            sizes[name] = {attr: int(getattr(module, attr)) for attr in attrs}
    return sizes


def pruned_payload(
    small: nn.Module,
    input_shape: list[int],
    model_spec: dict[str, Any] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """What :func:`save_pruned` writes: plain tensors, ints and strings only."""
    return {
        "format": FORMAT,
        "state_dict": small.state_dict(),
        "modules": module_sizes(small),
        "input_shape": list(input_shape),
        "model": model_spec,
        "num_classes": num_classes,
    }


def save_pruned(payload: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_save(payload, path)
    return path


def shrink_to(model: nn.Module, payload: Mapping[str, Any]) -> nn.Module:
    """Resize ``model``'s modules and tensors to the payload's and load its weights."""
    for name, attrs in payload["modules"].items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, value)
    state = payload["state_dict"]
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        param = module._parameters.get(leaf)
        buffer = module._buffers.get(leaf)
        if param is not None and param.shape != tensor.shape:
            module._parameters[leaf] = nn.Parameter(
                torch.empty_like(tensor), requires_grad=param.requires_grad
            )
        elif buffer is not None and buffer.shape != tensor.shape:
            module._buffers[leaf] = torch.empty_like(tensor)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_pruned(
    path: str | Path, model: nn.Module | None = None, *, host: Host | None = None
) -> nn.Module:
    """Rebuild a pruned model: from ``model`` (a fresh dense instance of the architecture) or,
    if None, from the file's model spec through ``host``'s model registry."""
    payload = load_checkpoint(path)
    if payload.get("format") != FORMAT:
        raise ExportError(f"{path} is not a {FORMAT} file")
    if model is None:
        spec = payload.get("model")
        if spec is None or payload.get("num_classes") is None:
            raise ExportError(f"{path} has no model spec: pass a dense model to load_pruned")
        if host is None:
            raise ExportError(
                "load_pruned needs a dense model or a host to build one from the file's spec "
                "(compressor.load_host())"
            )
        dtype = getattr(torch, str(payload.get("input_dtype", "float32")))  # int64: token ids
        info = DataInfo(tuple(payload["input_shape"]), int(payload["num_classes"]), dtype)
        model = host.build_model(spec, info)
    return shrink_to(model, payload)


def export_report(
    model: nn.Module,
    small: nn.Module,
    report: dict[str, Any],
    payload: dict[str, Any],
    path: Path,
    *,
    batches: tuple[int, ...] = (1, 64),
    repeats: int | None = None,
) -> dict[str, Any]:
    """Add file sizes and alternating CPU latency (dense vs pruned) to ``report``."""
    dense = copy.deepcopy(model).cpu().eval()
    small = small.cpu().eval()
    report["file_bytes"] = {
        "dense": serialized_bytes(dense.state_dict()),
        "pruned": path.stat().st_size if path.exists() else serialized_bytes(payload),
    }
    report["latency_cpu"] = {"threads": LATENCY_THREADS}
    with torch_threads(LATENCY_THREADS):
        for batch in batches:
            x = torch.randn(batch, *report["input_shape"])
            timing = compare_latency(
                {"dense": dense, "pruned": small}, x, repeats=repeats or LATENCY_REPEATS
            )
            report["latency_cpu"][f"batch{batch}"] = timing
    return report


def export_transformer(
    context: EvaluationContext,
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    path: Path,
    *,
    atol: float = 1e-5,
) -> Path:
    """A transformer's dead heads and neurons removed (:mod:`.transformer`): the torch file
    (same format, rebuilt by :func:`load_pruned`), its JSON report and, when every layer keeps
    the same counts, an HF folder ``<stem>-hf/``. Everything is checked before it is written."""
    masked = masked_copy(model, masks).cpu()
    info = context.data_info
    length = int(info.input_shape[-1]) if info and info.input_shape else 16
    probe = token_probe(masked, length)
    small, found = prune_transformer(masked)
    diff = max_diff(small, masked, probe)
    if not diff <= atol:
        raise ExportError(
            f"pruned transformer differs from the masked model by {diff:.3g} (> {atol:g}); "
            "were its heads/neurons pruned by the heads/neurons operators?"
        )
    config = hf_config(small, found["groups"], found["kept"])
    folder = hf_folder_for(path)
    hf_diff = None
    if not isinstance(config, str):
        hf_diff = write_hf_folder(small, config, masked, folder, probe, atol)
    payload = pruned_payload(
        small, [length], context.model_spec, info.num_classes if info else None
    )
    payload["input_dtype"] = "int64"
    for name, attrs in module_attributes(small, found["groups"]).items():
        payload["modules"].setdefault(name, {}).update(attrs)
    path = save_pruned(payload, path)
    _, dense_params = count_params(masked)
    report = {
        "format": FORMAT,
        "input_shape": [length],
        "max_abs_diff": diff,
        "params": {"dense": dense_params, "pruned": count_params(small)[1]},
        "kept": found["kept"],
        "hf_folder": str(folder) if hf_diff is not None else None,
        "hf_max_abs_diff": hf_diff,
        "hf_note": config if isinstance(config, str) else None,
    }
    atomic_write_json(report, path.with_suffix(".json"))
    return path


def count_params(model: nn.Module) -> tuple[int, int]:
    """(tensors, parameters) of ``model``, shared weights counted once."""
    params = list(model.parameters())
    return len(params), sum(p.numel() for p in params)


def before_after(report: dict[str, Any]) -> list[str]:
    """``parameters 1,000 → 500 (-50.0%)`` for parameters, MACs and file size."""
    rows = [("parameters", "params", "{:,}"), ("MACs", "macs", "{:,}")]
    rows.append(("file size", "file_bytes", "{:,} bytes"))
    lines = []
    for title, key, form in rows:
        if key not in report:
            continue
        dense, pruned = report[key]["dense"], report[key]["pruned"]
        change = f" ({100 * (pruned - dense) / dense:+.1f}%)" if dense else ""
        lines.append(f"{title:<10} {form.format(dense)} → {form.format(pruned)}{change}")
    return lines


class PrunedExporter(Exporter):
    """``--format pruned``: the physically pruned model, plus ``<path stem>.json``; refused when
    no channel can be removed (unstructured zeros: ``--format sparse`` stores those)."""

    class Config(TypeConfig):
        format: Literal["pruned"] = "pruned"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.report: dict[str, Any] = {}

    def summary(self) -> list[str]:
        return before_after(self.report)

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        masks = {n: m for n in context.masks if (m := context.masks.get(n)) is not None}
        info = context.data_info
        if unit_groups(model):
            written = export_transformer(context, model, masks, Path(path))
            self.report = json.loads(written.with_suffix(".json").read_text())
            return written
        shape = getattr(model, "example_input_shape", None) or (info.input_shape if info else None)
        x = example_input(model, shape)
        small, report = export_pruned(model, masks, x)
        if report["params"]["pruned"] == report["params"]["dense"]:
            raise InputError(
                "nothing in this run can be removed physically (no channel is zero throughout), "
                "so a pruned file would be no smaller: for a compact file of its zeros use "
                "--format sparse"
            )
        payload = pruned_payload(
            small, report["input_shape"], context.model_spec, info.num_classes if info else None
        )
        path = save_pruned(payload, Path(path))
        export_report(model, small, report, payload, path)
        atomic_write_json(report, path.with_suffix(".json"))
        self.report = report
        return path


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(PrunedExporter)
