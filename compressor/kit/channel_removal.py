"""Physical channel removal (METHODS.md §9): drop the channels a masked model never uses.

A channel is *dead* in a (masked) model when every conv/linear row producing it is zero and
either every consumer's input columns for it are zero (what the ``channel`` operator's masks
give) or its output is exactly zero (biases and BN weight/bias zero too). Dead channels are
removed group by group through Torch-Pruning's dependency graph, so BN entries, residual
partners and consumer columns go with them; a group keeps at least one channel. The result is
verified against the masked model on random inputs before it is returned.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.kit.channels import (
    ChannelGroup,
    build_graph,
    channel_groups,
    channel_values,
    example_input,
    output_layers,
    require_torch_pruning,
)

PRUNED_FORMAT = "compressor-pruned/1"  # the format tag of a pruned export and its report


class ExportError(CompressorError):
    """The pruned model does not reproduce the masked one (or cannot be built)."""


def _zero(
    group: ChannelGroup,
    model_params: Mapping[str, torch.Tensor],
    roles: set[str],
    scored: bool | None = None,
) -> torch.Tensor:
    """Per channel: are all entries on the group's slots of ``roles`` exactly zero?"""
    zero = torch.ones(group.size, dtype=torch.bool)
    for slot in group.slots:
        if slot.role not in roles or (scored is not None and slot.scored != scored):
            continue
        rows = channel_values(slot, model_params[slot.name], group.size)
        zero &= (rows == 0).all(1).cpu()
    return zero


def dead_channels(group: ChannelGroup, params: Mapping[str, torch.Tensor]) -> list[int]:
    """Channels of ``group`` whose removal cannot change the model's output (module docstring);
    at least one channel is always kept."""
    produced_zero = _zero(group, params, {"out"}, scored=True)
    consumers_zero = _zero(group, params, {"in"})
    output_zero = _zero(group, params, {"out"}, scored=False) & _zero(group, params, {"norm"})
    dead = produced_zero & (consumers_zero | output_zero)
    if bool(dead.all()):
        dead[0] = False
    return [int(i) for i in torch.nonzero(dead).flatten()]


def count_macs_params(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """MACs and parameters of one forward on ``x`` (Torch-Pruning's counter)."""
    tp = require_torch_pruning()
    macs, params = tp.utils.count_ops_and_params(model, x)
    return int(macs), int(params)


def _removable(dead: list[int], size: int, multiple: int) -> list[int]:
    """The dead channels to remove so that the kept width is a multiple of ``multiple`` (or
    ``size``): the last ones stay, still zero."""
    kept = size - len(dead)
    if multiple <= 1 or kept == 0:
        return dead
    padded = min(size, -(-kept // multiple) * multiple)
    return dead[: len(dead) - (padded - kept)]


def masked_copy(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> nn.Module:
    """A copy of ``model`` in eval mode with ``masks`` multiplied into its weights."""
    masked = copy.deepcopy(model).eval()
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in (masks or {}).items():
            if name not in params:
                raise ExportError(f"mask for {name!r}, which the model does not have")
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
    return masked


def export_pruned(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    x: torch.Tensor | None = None,
    *,
    atol: float = 1e-5,
    verify_batch: int = 4,
    width_multiple: int = 1,
) -> tuple[nn.Module, dict[str, Any]]:
    """Apply ``masks`` (name -> keep mask; None: use the weights' zeros) to a copy of
    ``model``, remove its dead channels, verify, and return ``(small_model, report)``.

    ``x`` is a batch-1 example input (default: :func:`example_input`). ``model`` itself is
    never modified. Raises :class:`ExportError` when outputs differ by more than ``atol``.
    ``width_multiple`` keeps enough dead (all-zero) channels for every layer's width to be a
    multiple of it (or its full width): a kernel that works in blocks of that many channels
    can be slower on a narrower layer than on the padded one (ONNX Runtime's int8
    convolutions at 8 channels against 16); the outputs are the same.
    """
    require_torch_pruning()
    masked = masked_copy(model, masks)
    x = example_input(masked) if x is None else x
    small = copy.deepcopy(masked)
    graph = build_graph(small, x)
    groups, graph = channel_groups(small, x, output_layers(small, x), graph=graph)
    small_params = dict(small.named_parameters())
    modules = dict(small.named_modules())
    plan = [
        (group, _removable(dead_channels(group, small_params), group.size, width_multiple))
        for group in groups
    ]
    for group, dead in plan:
        if dead:
            root = modules[group.root]
            pruner = graph.get_pruner_of_module(root)
            graph.get_pruning_group(root, pruner.prune_out_channels, dead).prune()
    small.eval()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((verify_batch, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
    with torch.no_grad():
        diff = (small(probe) - masked(probe)).abs().max().item()
    if not diff <= atol:
        raise ExportError(
            f"pruned model differs from the masked model by {diff:.3g} (> {atol:g}); "
            "are consumers of pruned channels masked too (or their outputs exactly zero)?"
        )
    dense_macs, dense_params = count_macs_params(masked, x)
    macs, n_params = count_macs_params(small, x)
    report = {
        "format": PRUNED_FORMAT,
        "input_shape": list(x.shape[1:]),
        "max_abs_diff": diff,
        "params": {"dense": dense_params, "pruned": n_params},
        "macs": {"dense": dense_macs, "pruned": macs},
        "groups": {
            group.root: {"channels": group.size, "kept": group.size - len(dead)}
            for group, dead in plan
        },
    }
    return small, report


def serialized_bytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()
