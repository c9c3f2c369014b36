"""Config types every plugin config builds on.

Every type a recipe can name is a class with a nested pydantic ``Config`` (subclass of
:class:`TypeConfig`) carrying a ``Literal`` tag field (``kind``, ``type``, ``name`` or
``format``, as the base class's ``TAG`` says). The engine builds discriminated unions over all
registered configs, so a third-party type validates exactly like a built-in one.

A config field whose value is itself a registered type uses the ``*Spec`` aliases below
(``operator: OperatorSpec``); the engine swaps in the union of all registered types at load.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from compressor.contract.selection import SelectionConfig


class TypeConfig(BaseModel):
    """Base of every plugin config: unknown keys are errors, configs are immutable, no float
    may be infinite or NaN (``lr: .inf`` cannot train), and ``true`` is not a number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and _numeric(info.annotation):
                    raise ValueError(f"{name} must be a number, not {str(value).lower()}")
        return data


@dataclass(frozen=True)
class RegistryRef:
    """Marks a config field whose value is any type registered under ``kind``."""

    kind: str


def _numeric(annotation: Any) -> bool:
    """Whether a field takes numbers (and not booleans): int, float, or optional ones."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else (annotation,)  # fmt: skip
    options = tuple(
        typing.get_args(o)[0] if typing.get_origin(o) is Annotated else o for o in options
    )
    return (
        bool(options)
        and all(o in (int, float, type(None)) for o in options)
        and options != (type(None),)
    )


class OperatorConfig(TypeConfig, SelectionConfig):
    """Base config of an operator: the tag plus which tensors it compresses."""


def check_sparsity(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {value}")
    return value


Sparsity = Annotated[float, AfterValidator(check_sparsity)]
"""A fraction of weights removed: 0 <= s < 1."""

OperatorSpec = Annotated[OperatorConfig, RegistryRef("operators")]
"""A config field holding any registered operator's config."""

ScheduleSpec = Annotated[TypeConfig, RegistryRef("schedules")]
"""A config field holding any registered schedule's config."""
