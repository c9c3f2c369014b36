"""Coupled channel groups from Torch-Pruning's dependency graph, as plain index tables.

Torch-Pruning traces the model once and says which tensors share a channel dimension: a conv,
its BatchNorm, every conv whose output meets it at a residual add, and the input columns of
every consumer. We turn each group into :class:`ChannelGroup` — for every parameter, the axis
and the positions along it that belong to each group channel — so the channel operator can score
and mask *any* dict of same-named tensors (CrAM's perturbed weights included) without touching
the graph again, and the exporter can decide which channels are dead.

``torch-pruning`` is imported lazily so that the plugin loads without it; using channel pruning
without it raises a :class:`~compressor.errors.CompressorError` naming the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compressor.contract.errors import CompressorError

Role = Literal["out", "in", "norm"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_WEIGHTED = (*_CONV, *_TRANSPOSED, nn.Linear)
_NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)
_PROBE_SIZES = (32, 40, 28, 64, 16, 224)


def require_torch_pruning() -> ModuleType:
    """Import ``torch_pruning`` or say exactly which package is missing."""
    try:
        import torch_pruning
    except ImportError as exc:
        raise CompressorError(
            "channel pruning and 'pruned' export need the 'torch-pruning' package "
            "(pip install torch-pruning)"
        ) from exc
    return torch_pruning


@dataclass(frozen=True)
class Slot:
    """Where a group's channels sit in one parameter.

    ``positions[i]`` along axis ``dim`` belongs to group channel ``channels[i]``; a channel
    may own several positions (a Linear after a flatten owns ``length`` input columns).
    ``role`` is ``out`` for a conv/linear producing the channel (weight and bias), ``in`` for a
    consumer's input columns and ``norm`` for normalisation parameters of the channel.
    """

    name: str
    dim: int
    positions: torch.Tensor
    channels: torch.Tensor
    role: Role
    scored: bool


@dataclass
class ChannelGroup:
    """Channels pruned together: ``size`` channels, indexed as the root layer's outputs."""

    root: str
    size: int
    slots: list[Slot] = field(default_factory=list)

    def names(self) -> set[str]:
        return {slot.name for slot in self.slots}

    def scored_slots(self) -> list[Slot]:
        """The weights that produce the channel (out-role conv/linear weights)."""
        return [slot for slot in self.slots if slot.scored]


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, IndexError):
        return False
    return True


def example_input(model: nn.Module, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A batch-1 zero input for tracing ``model``.

    Taken from ``shape`` (without the batch axis) if given, else from the model's
    ``example_input_shape`` attribute (our builders set it), else derived from the first
    conv/linear layer: a Linear gives ``(in_features,)``; a ConvNd gives ``in_channels`` and the
    first of a few common spatial sizes for which a forward pass works. Raises ValueError when
    nothing works, asking for ``example_input_shape``.
    """
    device = _device(model)
    shape = shape or getattr(model, "example_input_shape", None)
    if shape:
        return torch.zeros(1, *shape, device=device)
    first = next((m for m in model.modules() if isinstance(m, _WEIGHTED)), None)
    if isinstance(first, nn.Linear):
        return torch.zeros(1, first.in_features, device=device)
    if isinstance(first, _CONV + _TRANSPOSED):
        dims = len(first.kernel_size)
        was_training = model.training
        model.eval()
        try:
            for size in _PROBE_SIZES:
                x = torch.zeros(1, first.in_channels, *([size] * dims), device=device)
                if _runs(model, x):
                    return x
        finally:
            model.train(was_training)
    raise ValueError(
        "cannot derive an example input from the model's first layer; "
        "set example_input_shape (without the batch axis) in the operator config"
    )


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Conv/linear modules whose output *is* a model output (the classifier): never pruned
    at their outputs, since that would change the model's output shape. When an op without
    weights follows (``log_softmax(fc(x))``), the last conv/linear to run is taken instead."""
    produced: dict[int, nn.Module] = {}
    order: list[nn.Module] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        order.append(module)
        for tensor in _tensors(output):
            produced[id(tensor)] = module

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _WEIGHTED)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
        found = [produced[id(t)] for t in _tensors(out) if id(t) in produced]
        if not found and order:
            found = [order[-1]]
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found


def build_graph(model: nn.Module, x: torch.Tensor) -> Any:
    """Trace Torch-Pruning's dependency graph in eval mode (BN statistics stay untouched)."""
    tp = require_torch_pruning()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    finally:
        model.train(was_training)


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, _CONV)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _slots_for(
    module: nn.Module, prefix: str, out: bool, positions: torch.Tensor, channels: torch.Tensor
) -> list[Slot]:
    """The parameters of ``module`` touched when its outputs (``out``) or inputs are pruned."""

    def slot(pname: str, dim: int, role: Role, scored: bool = False) -> list[Slot]:
        param = getattr(module, pname, None)
        if not isinstance(param, nn.Parameter):
            return []
        name = f"{prefix}.{pname}" if prefix else pname
        return [Slot(name, dim, positions, channels, role, scored)]

    if isinstance(module, _WEIGHTED):
        if (
            isinstance(module, _CONV + _TRANSPOSED)
            and module.groups > 1
            and not _is_depthwise(module)
        ):
            raise ValueError(f"grouped convolution {prefix!r} is not supported by channel pruning")
        if out or _is_depthwise(module):
            dim = 1 if isinstance(module, _TRANSPOSED) else 0
            return slot("weight", dim, "out", scored=out) + slot("bias", 0, "out")
        return slot("weight", 0 if isinstance(module, _TRANSPOSED) else 1, "in")
    if isinstance(module, _NORMS) and out:
        return slot("weight", 0, "norm") + slot("bias", 0, "norm")
    return []


def channel_groups(
    model: nn.Module,
    x: torch.Tensor,
    ignored: Sequence[nn.Module] = (),
    graph: Any = None,
) -> tuple[list[ChannelGroup], Any]:
    """Every prunable channel group of ``model`` (roots: conv/linear outputs).

    A group containing an ``ignored`` module's outputs is left out entirely (Torch-Pruning's
    rule), so ignoring the classifier keeps the model's output shape. Returns the groups and the
    dependency graph (the exporter prunes through it).
    """
    graph = graph if graph is not None else build_graph(model, x)
    names = {module: name for name, module in model.named_modules()}
    groups: list[ChannelGroup] = []
    for group in graph.get_all_groups(ignored_layers=list(ignored), root_module_types=_WEIGHTED):
        root = group[0].dep.target.module
        size = len(group[0].idxs)
        found = ChannelGroup(names[root], size)
        seen: set[tuple[str, int]] = set()
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in names:
                continue
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            positions = torch.as_tensor(list(item.idxs), dtype=torch.long)
            channels = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
            for slot in _slots_for(module, names[module], out, positions, channels):
                if (slot.name, slot.dim) not in seen:
                    seen.add((slot.name, slot.dim))
                    found.slots.append(slot)
        groups.append(found)
    return groups, graph


def channel_values(slot: Slot, tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Per group channel, ``tensor``'s entries on ``slot`` as rows: shape ``[size, -1]``.

    Channels owning several positions (flatten) get their positions' rows concatenated, so
    a reduction over the last axis covers everything the channel owns.
    """
    rows = tensor.detach().movedim(slot.dim, 0)[slot.positions.to(tensor.device)]
    rows = rows.reshape(len(slot.positions), -1)
    order = torch.argsort(slot.channels, stable=True)
    per_channel = len(slot.positions) // size
    if per_channel * size != len(slot.positions):
        raise ValueError(f"{slot.name}: {len(slot.positions)} positions for {size} channels")
    return rows[order.to(rows.device)].reshape(size, -1)


def slot_mask(slot: Slot, shape: torch.Size, keep: torch.Tensor) -> torch.Tensor:
    """A boolean mask of ``shape``: False on every position of a dropped channel."""
    dropped = ~keep[slot.channels.to(keep.device)]
    mask = torch.ones(shape, dtype=torch.bool, device=keep.device)
    index: list[slice | torch.Tensor] = [slice(None)] * len(shape)
    index[slot.dim] = slot.positions.to(keep.device)[dropped]
    mask[tuple(index)] = False
    return mask
