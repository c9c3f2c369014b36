"""Plugins from plain functions: ``@model("name")`` and ``@dataset("name")``.

The function's keyword parameters become the recipe's config fields (with their types and
defaults), so a small model or data set needs no class::

    @model("tiny_mlp")
    def tiny_mlp(info: DataInfo, hidden: int = 32) -> nn.Module: ...

    @dataset("xor")
    def xor(samples: int = 512) -> DataSplits: ...

Each decorator returns an ordinary builder class, registered like any other.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import create_model
from torch import nn

from compressor.contract.config import TypeConfig
from compressor.contract.data import (
    Data,
    DataInfo,
    DatasetBuilder,
    DatasetConfig,
    DataSplits,
    ModelBuilder,
)


def _fields(fn: Callable[..., Any], skip: int) -> dict[str, Any]:
    """pydantic field definitions from ``fn``'s parameters after the first ``skip``."""
    hints = typing.get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in list(inspect.signature(fn).parameters.values())[skip:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{fn.__name__}: *args/**kwargs cannot become config fields")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    return fields


def _config(
    fn: Callable[..., Any], name: str, base: type[TypeConfig], skip: int
) -> type[TypeConfig]:
    tag: Any = Literal[name]  # type: ignore[valid-type]
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{fn.__name__}_config", __base__=base, name=(tag, ...), **_fields(fn, skip)
    )


def _arguments(config: TypeConfig, fn: Callable[..., Any], skip: int) -> dict[str, Any]:
    names = list(inspect.signature(fn).parameters)[skip:]
    return {n: getattr(config, n) for n in names}


def model(name: str) -> Callable[[Callable[..., nn.Module]], type[ModelBuilder]]:
    """Turn ``fn(info, **options) -> nn.Module`` into a model builder named ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> type[ModelBuilder]:
        def build(self: ModelBuilder, info: DataInfo) -> nn.Module:
            return fn(info, **_arguments(self.config, fn, 1))

        namespace = {"Config": _config(fn, name, TypeConfig, 1), "build": build,
                     "__doc__": fn.__doc__, "__module__": fn.__module__}  # fmt: skip
        return type(fn.__name__, (ModelBuilder,), namespace)

    return wrap


def dataset(
    name: str, *, task: str | None = None
) -> Callable[[Callable[..., DataSplits | Data]], type[DatasetBuilder]]:
    """Turn ``fn(**options) -> DataSplits | Data`` into a dataset builder named ``name``,
    whose recipes default to ``task`` (e.g. ``"classification"``); the recipe may also set
    ``batch_size``, ``num_workers`` and the other loader fields. The data is built once per
    builder (sizes and shapes are read from it), so keep such data sets small."""

    def wrap(fn: Callable[..., DataSplits | Data]) -> type[DatasetBuilder]:
        def build(self: DatasetBuilder) -> DataSplits | Data:
            cached = getattr(self, "_splits", None)
            if cached is None:
                cached = fn(**_arguments(self.config, fn, 0))
                self._splits = cached  # type: ignore[attr-defined]
            return cached

        def train_size(self: DatasetBuilder) -> int:
            built = build(self)
            if isinstance(built, DataSplits):
                return int(built.train_x.shape[0])
            return len(built.train)  # type: ignore[arg-type]

        def info(self: DatasetBuilder) -> DataInfo:
            return build(self).info

        namespace = {"Config": _config(fn, name, DatasetConfig, 0), "build": build,
                     "train_size": train_size, "info": info, "default_task": task,
                     "__doc__": fn.__doc__, "__module__": fn.__module__}  # fmt: skip
        return type(fn.__name__, (DatasetBuilder,), namespace)

    return wrap
