"""Which tensors a method may compress: by module type and by name, never by position.

Default: the ``weight`` of every ``nn.Linear`` and ``nn.ConvNd`` (first and last layers
included) — Hugging Face's ``Conv1D`` counts as linear, its ``[in, out]`` weight marked
``transposed`` — and ``nn.Embedding`` when asked. Never normalisation parameters or biases.
Patterns are shell globs over fully-qualified parameter names (``layers.*.weight``) or, with a
``re:`` prefix, regular expressions matched with ``re.fullmatch``.

Names are the user's own: a model wrapped by DDP (``module.``) or ``torch.compile``
(``_orig_mod.``) is selected through the module it wraps. A tensor shared by two modules (tied
input and output embeddings) is one target, named by its first name in ``named_parameters()``,
with every name it has as ``aliases``; patterns match any of them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import torch
from torch import nn

from compressor.contract.selection import MODULE_TYPES, ModuleKind, SelectionConfig, Target

__all__ = [
    "ModuleKind",
    "SelectionConfig",
    "Target",
    "is_hf_conv1d",
    "matches",
    "out_in",
    "parameter_names",
    "select",
    "select_targets",
    "sparsity_stats",
    "unwrap_model",
]


def out_in(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The tensor in torch's ``[out, in, *k]`` layout (a view; ``[in, out]`` is transposed)."""
    return tensor.t() if transposed else tensor


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's linear layers), recognised without importing it."""
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, so names never carry their prefixes."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            inner = model._orig_mod
            assert isinstance(inner, nn.Module)
            model = inner
        else:
            return model


def parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name of every parameter, by ``id`` (tied tensors have several)."""
    names: dict[int, list[str]] = {}
    for name, param in unwrap_model(model).named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def dense_by_default(model: nn.Module) -> dict[int, list[str]]:
    """A language model's input embeddings and LM head (Hugging Face's
    ``get_input_embeddings`` / ``get_output_embeddings``), by parameter id with their names:
    left dense unless a recipe names them (``include``, or ``modules: [embedding]``), as the
    field does (llm-compressor ignores ``lm_head``); a tied pair is one tensor."""
    model = unwrap_model(model)
    names = parameter_names(model)
    found: dict[int, list[str]] = {}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)() if hasattr(model, getter) else None
        except (NotImplementedError, AttributeError):
            module = None
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and module is not None:
            found[id(weight)] = names.get(id(weight), [])
    return found


def select_targets(
    model: nn.Module,
    modules: Sequence[str] = ("linear", "conv"),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[Target]:
    """The eligible weights of ``model`` in module order (a language model's embeddings and LM
    head only when named: :func:`dense_by_default`)."""
    model = unwrap_model(model)
    kinds = tuple(cls for kind in modules for cls in MODULE_TYPES[kind])
    linear = "linear" in modules
    names = parameter_names(model)
    dense = {} if "embedding" in modules else dense_by_default(model)
    targets = []
    seen: set[int] = set()  # a parameter shared by two modules (tied weights) is one target
    for module_name, module in model.named_modules():
        conv1d = linear and is_hf_conv1d(module)
        if not (isinstance(module, kinds) or conv1d):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        seen.add(id(weight))
        own = f"{module_name}.weight" if module_name else "weight"
        aliases = tuple(names.get(id(weight), [own]))
        named = any(matches(n, p) for n in aliases for p in include)
        if (include and not named) or (id(weight) in dense and not named):
            continue
        if any(matches(n, p) for n in aliases for p in exclude):
            continue
        targets.append(Target(aliases[0], module_name, module, weight, conv1d, aliases))
    return targets


def select(model: nn.Module, config: SelectionConfig) -> list[Target]:
    return select_targets(model, config.modules, config.include, config.exclude)


def sparsity_stats(targets: Sequence[Target]) -> dict[str, object]:
    """Exact zero fraction per tensor and over all of them (counted over eligible weights)."""
    per_layer: dict[str, float] = {}
    zeros = total = 0
    with torch.no_grad():
        for target in targets:
            z = int((target.param == 0).sum().item())
            n = target.param.numel()
            per_layer[target.name] = z / n if n else 0.0
            zeros += z
            total += n
    return {
        "global": zeros / total if total else 0.0,
        "zeros": zeros,
        "eligible": total,
        "per_layer": per_layer,
    }
