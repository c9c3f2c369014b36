"""Physical removal of pruned attention heads and feed-forward neurons (``--format pruned``).

A unit (see :func:`compressor.plugin_api.transformer_units`) is *dead* when its producer weights
(q/k/v rows, up/gate rows) and its consumer columns (o/down) are all exactly zero — what the
``heads`` and ``neurons`` operators' masks give. Dead units are cut out of every tensor of their
group (biases included), the Linear/Conv1D sizes and the attention's head counts follow, and
the result is checked against the masked model on random token ids (max |diff| ≤ ``atol``)
before anything is written. A layer keeps at least one unit.

When every layer keeps the same number of heads and of neurons (``allocation: uniform``), the
small model is also written as a Hugging Face folder: the config gets the new
``intermediate_size`` (GPT-2: ``n_inner``), ``num_attention_heads``, ``num_key_value_heads`` and
an explicit ``head_dim``; it is reloaded with ``from_pretrained`` and checked the same way.
BERT and GPT-2 configs derive the head size from ``hidden_size / heads``, so with heads removed
they cannot describe the model: then only the torch file is written, and the report says why.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.plugin_api import (
    CompressorError,
    LayoutError,
    UnitGroup,
    logits_of,
    transformer_units,
)

HF_SUFFIX = "-hf"  # the HF folder sits beside the export file: export-pruned-hf/


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


def hf_config(model: nn.Module, groups: list[UnitGroup], kept: dict[str, dict[str, int]]) -> Any:
    """The small model's HF config, or a string saying why there is none."""
    config = copy.deepcopy(getattr(model, "config", None))
    if config is None or not hasattr(config, "to_dict"):
        return "the model has no Hugging Face config"
    heads = {g.module: g for g in groups if g.kind == "attention"}
    neurons = {g.module: g for g in groups if g.kind == "feed_forward"}
    head_counts, neuron_counts = set(kept["heads"].values()), set(kept["neurons"].values())
    if len(head_counts) > 1 or len(neuron_counts) > 1:
        return "layers keep different numbers of heads or neurons (allocation: global)"
    if neuron_counts:
        (n,) = neuron_counts
        family = next(iter(neurons.values())).family
        setattr(config, "n_inner" if family == "gpt2" else "intermediate_size", n)
    if head_counts:
        (k,) = head_counts
        sample = next(iter(heads.values()))
        if k != sample.size:
            if sample.family != "llama":
                return (
                    f"a {sample.family.upper()} config derives the head size from hidden_size "
                    "/ heads and cannot describe removed heads"
                )
            config.num_attention_heads = k * sample.group
            config.num_key_value_heads = k
            config.head_dim = sample.head_dim
            if config.hidden_size % config.num_attention_heads:
                return mistral_config(config)
    return config


def mistral_config(config: Any) -> Any:
    """The same model as a Mistral config: LlamaConfig refuses ``hidden_size`` not divisible
    by the head count even with an explicit ``head_dim``; Mistral's architecture is Llama's
    (RMSNorm, RoPE, SwiGLU, no biases) and takes ``head_dim`` as given."""
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "the Llama config refuses the new head count, and Mistral has no biases"
    import transformers

    fields = transformers.MistralConfig().to_dict()
    given = {k: v for k, v in config.to_dict().items() if k in fields}
    given.update(sliding_window=None, model_type="mistral")
    given.pop("architectures", None)
    return transformers.MistralConfig(**given)


def hf_class(model: nn.Module, config: Any) -> Any:
    """The transformers class for ``config``: the model's own, or its Mistral twin."""
    name = type(model).__name__
    if getattr(config, "model_type", "") == "mistral" and name.startswith("Llama"):
        import transformers

        return getattr(transformers, "Mistral" + name.removeprefix("Llama"))
    return type(model)


def write_hf_folder(
    small: Any,
    config: Any,
    masked: nn.Module,
    folder: Path,
    probe: torch.Tensor,
    atol: float,
) -> float:
    """Save ``small`` with ``config`` as an HF folder, reload it, check it; atomic (a failed
    check leaves nothing). Returns the reloaded model's max |diff| to ``masked``."""
    cls = hf_class(small, config)
    if cls is type(small):
        model = copy.deepcopy(small)
        model.config = config
    else:
        model = cls(config)
        model.load_state_dict(small.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        reloaded = cls.from_pretrained(staging).eval()
        diff = max_diff(reloaded, masked, probe)
        if not diff <= atol:
            raise CompressorError(
                f"the Hugging Face folder's model differs from the masked model by {diff:.3g}"
            )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return diff


def hf_folder_for(path: Path) -> Path:
    return path.with_name(path.stem + HF_SUFFIX)
