"""Physical removal of pruned attention heads and feed-forward neurons (METHODS.md §9).

The transformer counterpart of :mod:`compressor.kit.channel_removal`, shared by the ``pruned``
exporter and the ``realised`` evaluator. A unit (:func:`transformer_units`) is *dead* when its
producer weights (q/k/v rows, up/gate rows) and its consumer columns (o/down) are all exactly
zero — what the ``heads`` and ``neurons`` operators' masks give. Dead units are cut out of every
tensor of their group (biases included), the Linear/Conv1D sizes and the attention's head counts
follow. A layer keeps at least one unit. Callers check the result against the masked model
(:func:`max_diff` on :func:`token_probe`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.contract.task import logits_of
from compressor.kit.transformer import LayoutError, UnitGroup, transformer_units


def unit_groups(model: nn.Module) -> list[UnitGroup]:
    """Head groups (when the attention layout is known) and neuron groups of ``model``."""
    try:
        heads = transformer_units(model, "attention")
    except LayoutError:
        heads = []
    return heads + transformer_units(model, "feed_forward")


def _units_zero(group: UnitGroup, params: Mapping[str, torch.Tensor], role: str) -> torch.Tensor:
    zero = torch.ones(group.size, dtype=torch.bool)
    for slot in group.slots:
        if slot.role != role or (role == "out" and not slot.scored):
            continue
        values = params[slot.name].detach().movedim(slot.dim, 0)[slot.positions].cpu()
        nonzero = (values != 0).reshape(len(slot.positions), -1).any(1)
        zero[torch.unique(slot.channels[nonzero])] = False
    return zero


def dead_units(group: UnitGroup, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Boolean per unit: removable without changing the output (one unit always stays)."""
    dead = _units_zero(group, params, "out") & _units_zero(group, params, "in")
    if bool(dead.all()):
        dead[0] = False
    return dead


def _set_sizes(module: nn.Module) -> None:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = int(weight.shape[0]), int(weight.shape[1])
    elif hasattr(module, "nf"):  # HF Conv1D: weight [in, out]
        module.nx, module.nf = int(weight.shape[0]), int(weight.shape[1])  # type: ignore[assignment]


def remove_units(model: nn.Module, group: UnitGroup, dead: torch.Tensor) -> int:
    """Cut the ``dead`` units of ``group`` out of ``model`` in place; returns units kept."""
    keep = ~dead
    owners: set[str] = set()
    for slot in group.slots:
        owner, _, leaf = slot.name.rpartition(".")
        module = model.get_submodule(owner)
        param = module._parameters[leaf]
        assert param is not None and len(slot.positions) == param.shape[slot.dim]
        kept = torch.sort(slot.positions[keep[slot.channels]]).values.to(param.device)
        module._parameters[leaf] = nn.Parameter(
            param.detach().index_select(slot.dim, kept).contiguous(),
            requires_grad=param.requires_grad,
        )
        owners.add(owner)
    for owner in owners:
        _set_sizes(model.get_submodule(owner))
    count = int(keep.sum())
    if group.kind == "attention":
        for attr, value in head_attributes(group, count).items():
            owner, _, leaf = attr.rpartition(".")
            setattr(model.get_submodule(owner), leaf, value)
    return count


def head_attributes(group: UnitGroup, kept: int) -> dict[str, int]:
    """The attention attributes (module.attr -> value) that follow the kept head count."""
    width = kept * group.group * group.head_dim
    if group.family == "bert":
        prefix = f"{group.module}.self"
        return {f"{prefix}.num_attention_heads": kept, f"{prefix}.all_head_size": width}
    if group.family == "gpt2":
        return {f"{group.module}.num_heads": kept, f"{group.module}.split_size": width}
    return {}  # Llama-style: sizes come from the projections; the group ratio is unchanged


def module_attributes(model: nn.Module, groups: list[UnitGroup]) -> dict[str, dict[str, int]]:
    """Sizes to restore when rebuilding: Conv1D ``nf``/``nx`` and the attention attributes."""
    sizes: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if hasattr(module, "nf") and hasattr(module, "nx"):
            sizes[name] = {"nf": int(module.nf), "nx": int(module.nx)}
    for group in groups:
        if group.kind == "attention":
            for attr in head_attributes(group, 1):
                owner, _, leaf = attr.rpartition(".")
                value = getattr(model.get_submodule(owner), leaf)
                sizes.setdefault(owner, {})[leaf] = int(value)
    return sizes


def token_probe(model: nn.Module, length: int, batch: int = 2) -> torch.Tensor:
    """Random token ids for verification (seeded: the same probe every time)."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((logits_of(a(x)) - logits_of(b(x))).abs().max())


def prune_transformer(masked: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``masked`` (masks already applied) with its dead units removed, and what was
    kept: ``{"heads": {module: kept}, "neurons": {...}, "groups": [...]}``."""
    small = copy.deepcopy(masked).eval()
    groups = unit_groups(small)
    if not groups:
        raise CompressorError("no attention heads or feed-forward neurons found to remove")
    params = dict(small.named_parameters())
    plan = [(group, dead_units(group, params)) for group in groups]
    kept: dict[str, dict[str, int]] = {"heads": {}, "neurons": {}}
    for group, dead in plan:
        count = remove_units(small, group, dead)
        kept["heads" if group.kind == "attention" else "neurons"][group.module] = count
    return small, {"kept": kept, "groups": groups}
