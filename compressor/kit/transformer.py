"""Where a Hugging Face transformer's attention heads and feed-forward neurons sit.

Structured pruning of transformers (the ``heads`` and ``neurons`` operators) and their physical
removal (``pruned`` export) both need the same table: for every layer, which parameters carry a
head or a neuron, along which axis and at which positions. It is read from the module tree
(no tracing, so it works on any transformers version), for three layouts:

* **Llama-style** attention: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` Linear layers and a
  ``head_dim``; with grouped-query attention one *unit* is a key/value head together with its
  ``num_heads / num_kv_heads`` query heads (they can only be removed together).
* **BERT** attention: ``self.query``/``key``/``value`` and ``output.dense``.
* **GPT-2** attention: a fused ``c_attn`` Conv1D (``[in, 3·hidden]``: q, k, v blocks) and
  ``c_proj``.

and for the feed-forward block: ``gate_proj``/``up_proj``/``down_proj`` (Llama), BERT's
``intermediate.dense``/``output.dense``, GPT-2's ``c_fc``/``c_proj``. A neuron is one
intermediate unit: its producer rows and the matching consumer column.

Layouts that do not fit raise :class:`LayoutError` naming the module (a head count that does not
divide the projection, an attention module of an unknown kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.kit.channels import Slot
from compressor.kit.selection import is_hf_conv1d

Family = Literal["llama", "bert", "gpt2"]
Kind = Literal["attention", "feed_forward"]


class LayoutError(CompressorError):
    """The model's attention or feed-forward layout cannot be split into units."""


@dataclass
class UnitGroup:
    """The units of one layer's attention (heads) or feed-forward block (neurons).

    ``module`` is the attention/MLP module's name; ``size`` the number of units; for heads,
    ``head_dim`` and ``group`` (query heads per unit: 1 without grouped-query attention).
    ``slots`` are the channel toolkit's (:class:`~compressor.kit.channels.Slot`, a unit's index
    in ``channels``): ``out`` for producers (rows, biases; ``scored`` marks the weights that
    score a unit), ``in`` for the consumer's input columns."""

    kind: Kind
    family: Family
    module: str
    size: int
    head_dim: int = 0
    group: int = 1
    slots: list[Slot] = field(default_factory=list)

    def weight_names(self) -> set[str]:
        return {slot.name for slot in self.slots if slot.name.endswith("weight")}


def _is_linear(module: object) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Module) and is_hf_conv1d(module))


def _out_dim(module: nn.Module) -> int:
    """The output axis of a weight: 0 for Linear ``[out, in]``, 1 for Conv1D ``[in, out]``."""
    return 1 if is_hf_conv1d(module) else 0


def _width(module: nn.Module, out: bool) -> int:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    dim = _out_dim(module) if out else 1 - _out_dim(module)
    return int(weight.shape[dim])


def _blocks(units: int, width: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``offset + u·width + j`` for every unit ``u`` and ``j < width``."""
    positions = torch.arange(units * width) + offset
    return positions, torch.arange(units).repeat_interleave(width)


def _producer(
    prefix: str, module: nn.Module, positions: torch.Tensor, units: torch.Tensor
) -> list[Slot]:
    slots = [Slot(f"{prefix}.weight", _out_dim(module), positions, units, "out", True)]
    if isinstance(getattr(module, "bias", None), nn.Parameter):
        slots.append(Slot(f"{prefix}.bias", 0, positions, units, "out", False))
    return slots


def _consumer(prefix: str, module: nn.Module, positions: torch.Tensor, units: torch.Tensor) -> Slot:
    return Slot(f"{prefix}.weight", 1 - _out_dim(module), positions, units, "in", False)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _attention(name: str, module: nn.Module) -> UnitGroup | None:
    """The heads of ``module`` if it is an attention layout we know, else None."""
    q, k, v, o = (getattr(module, f"{p}_proj", None) for p in "qkvo")
    if all(isinstance(m, nn.Linear) for m in (q, k, v, o)) and hasattr(module, "head_dim"):
        assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear)
        assert isinstance(v, nn.Linear) and isinstance(o, nn.Linear)
        head_dim = int(getattr(module, "head_dim", 0))
        if head_dim <= 0:
            raise LayoutError(f"'{name}': head_dim {head_dim} is not positive")
        heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
        if (
            heads * head_dim != q.out_features
            or kv_heads * head_dim != k.out_features
            or kv_heads == 0
            or heads % kv_heads
        ):
            raise LayoutError(
                f"'{name}': {q.out_features} query and {k.out_features} key features do not "
                f"split into heads of {head_dim} with whole query groups per key/value head"
            )
        group = heads // kv_heads
        found = UnitGroup("attention", "llama", name, kv_heads, head_dim, group)
        q_pos, q_units = _blocks(kv_heads, group * head_dim)
        kv_pos, kv_units = _blocks(kv_heads, head_dim)
        found.slots += _producer(_join(name, "q_proj"), q, q_pos, q_units)
        found.slots += _producer(_join(name, "k_proj"), k, kv_pos, kv_units)
        found.slots += _producer(_join(name, "v_proj"), v, kv_pos, kv_units)
        found.slots.append(_consumer(_join(name, "o_proj"), o, q_pos, q_units))
        return found
    inner, output = getattr(module, "self", None), getattr(module, "output", None)
    dense = getattr(output, "dense", None)
    parts = [getattr(inner, p, None) for p in ("query", "key", "value")]
    if inner is not None and isinstance(dense, nn.Linear) and all(_is_linear(p) for p in parts):
        heads = int(getattr(inner, "num_attention_heads", 0))
        width = _width(parts[0], out=True)  # type: ignore[arg-type]
        if heads <= 0 or width % heads:
            raise LayoutError(f"'{name}': {width} features do not split into {heads} heads")
        head_dim = width // heads
        found = UnitGroup("attention", "bert", name, heads, head_dim)
        pos, units = _blocks(heads, head_dim)
        for part, module_part in zip(("query", "key", "value"), parts, strict=True):
            assert isinstance(module_part, nn.Module)
            found.slots += _producer(_join(name, f"self.{part}"), module_part, pos, units)
        found.slots.append(_consumer(_join(name, "output.dense"), dense, pos, units))
        return found
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if _is_linear(c_attn) and _is_linear(c_proj) and hasattr(module, "split_size"):
        assert isinstance(c_attn, nn.Module) and isinstance(c_proj, nn.Module)
        if getattr(module, "is_cross_attention", False):
            raise LayoutError(f"'{name}': cross-attention heads cannot be pruned")
        heads, split = int(getattr(module, "num_heads", 0)), int(getattr(module, "split_size", 0))
        if heads <= 0 or split % heads or _width(c_attn, out=True) != 3 * split:
            raise LayoutError(f"'{name}': {split} features do not split into {heads} heads")
        head_dim = split // heads
        found = UnitGroup("attention", "gpt2", name, heads, head_dim)
        pos, units = _blocks(heads, head_dim)
        fused = torch.cat([pos, pos + split, pos + 2 * split])
        found.slots += _producer(_join(name, "c_attn"), c_attn, fused, units.repeat(3))
        found.slots.append(_consumer(_join(name, "c_proj"), c_proj, pos, units))
        return found
    return None


def _feed_forward(name: str, module: nn.Module) -> UnitGroup | None:
    """The neurons of ``module`` if it is a feed-forward layout we know, else None."""
    up, down = getattr(module, "up_proj", None), getattr(module, "down_proj", None)
    if isinstance(up, nn.Linear) and isinstance(down, nn.Linear):
        gate = getattr(module, "gate_proj", None)
        found = UnitGroup("feed_forward", "llama", name, up.out_features)
        pos, units = _blocks(up.out_features, 1)
        if isinstance(gate, nn.Linear):
            found.slots += _producer(_join(name, "gate_proj"), gate, pos, units)
        found.slots += _producer(_join(name, "up_proj"), up, pos, units)
        found.slots.append(_consumer(_join(name, "down_proj"), down, pos, units))
        return found
    inter = getattr(getattr(module, "intermediate", None), "dense", None)
    out = getattr(getattr(module, "output", None), "dense", None)
    if isinstance(inter, nn.Linear) and isinstance(out, nn.Linear):
        found = UnitGroup("feed_forward", "bert", name, inter.out_features)
        pos, units = _blocks(inter.out_features, 1)
        found.slots += _producer(_join(name, "intermediate.dense"), inter, pos, units)
        found.slots.append(_consumer(_join(name, "output.dense"), out, pos, units))
        return found
    c_fc, c_proj = getattr(module, "c_fc", None), getattr(module, "c_proj", None)
    if _is_linear(c_fc) and _is_linear(c_proj):
        assert isinstance(c_fc, nn.Module) and isinstance(c_proj, nn.Module)
        size = _width(c_fc, out=True)
        found = UnitGroup("feed_forward", "gpt2", name, size)
        pos, units = _blocks(size, 1)
        found.slots += _producer(_join(name, "c_fc"), c_fc, pos, units)
        found.slots.append(_consumer(_join(name, "c_proj"), c_proj, pos, units))
        return found
    return None


def is_attention(module: nn.Module) -> bool:
    """Named like an attention layer (``*Attention``, ``nn.MultiheadAttention``)."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def transformer_units(model: nn.Module, kind: Kind) -> list[UnitGroup]:
    """Every layer's head (``kind="attention"``) or neuron (``"feed_forward"``) groups of
    ``model``, in module order.

    For heads, an attention-named module that is neither a known layout nor inside one raises
    :class:`LayoutError`: its heads could not be removed consistently.
    """
    groups: list[UnitGroup] = []
    covered: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{c}.") for c in covered):
            continue
        found = _attention(name, module) if kind == "attention" else _feed_forward(name, module)
        if found is not None:
            groups.append(found)
            covered.append(name)
        elif kind == "attention" and is_attention(module):
            raise LayoutError(
                f"'{name}' ({type(module).__name__}) is an attention layer whose heads cannot be "
                "located: heads pruning knows Llama-style (q/k/v/o_proj), BERT and GPT-2 attention"
            )
    return groups
