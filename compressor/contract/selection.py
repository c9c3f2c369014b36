"""Which tensors a method may compress: by module type and by name, never by position.

Default: the ``weight`` of every ``nn.Linear`` and ``nn.ConvNd`` (first and last layers
included); ``nn.Embedding`` when asked. Never normalisation parameters or biases.
Patterns are shell globs over fully-qualified parameter names (``layers.*.weight``) or, with a
``re:`` prefix, regular expressions matched with ``re.fullmatch``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, Field, field_validator
from torch import nn

ModuleKind = Literal["linear", "conv", "embedding"]

_KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "embedding": (nn.Embedding,),
}


_DEFAULT_MODULES: tuple[ModuleKind, ...] = ("linear", "conv")


class SelectionConfig(BaseModel):
    """Mixin for configs that select tensors (operators)."""

    modules: list[ModuleKind] = Field(default_factory=lambda: list(_DEFAULT_MODULES))
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("include", "exclude")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return patterns


@dataclass(frozen=True)
class Target:
    """One compressible tensor: its parameter name, owning module and the parameter."""

    name: str
    module_name: str
    module: nn.Module
    param: nn.Parameter

    @property
    def numel(self) -> int:
        return self.param.numel()


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def select_targets(
    model: nn.Module,
    modules: Sequence[str] = ("linear", "conv"),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[Target]:
    """The eligible weights of ``model`` in module order."""
    kinds = tuple(cls for kind in modules for cls in _KINDS[kind])
    targets = []
    seen: set[int] = set()  # a parameter shared by two modules (tied weights) is one target
    for module_name, module in model.named_modules():
        if not isinstance(module, kinds):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        seen.add(id(weight))
        name = f"{module_name}.weight" if module_name else "weight"
        if include and not any(matches(name, p) for p in include):
            continue
        if any(matches(name, p) for p in exclude):
            continue
        targets.append(Target(name, module_name, module, weight))
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
