"""What a method may compress: the selection fields of an operator's config and the
:class:`Target` a selected tensor becomes (``compressor.kit.selection`` does the selecting).

Patterns are shell globs over fully-qualified parameter names (``layers.*.weight``) or, with a
``re:`` prefix, regular expressions matched with ``re.fullmatch``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from torch import nn

ModuleKind = Literal["linear", "conv", "embedding"]

MODULE_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
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
    """One compressible tensor: its parameter name, owning module and the parameter.

    ``transposed``: the weight is stored ``[in, out]`` (Hugging Face ``Conv1D``), not torch's
    ``[out, in, *k]``; operators for which the input axis matters use :func:`out_in`.
    """

    name: str
    module_name: str
    module: nn.Module
    param: nn.Parameter
    transposed: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return self.param.numel()
