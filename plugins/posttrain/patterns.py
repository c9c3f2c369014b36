"""What the data-aware sparsity operators share: the ``nm: [N, M]`` pattern, its config
checks, and the operator behaviour that follows from it (:class:`PatternPruner`)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from compressor.plugin_api import CompressionContext, OperatorConfig, Target
from compressor_plugins.posttrain.calibration import CalibrationConfig, DataAwareOperator
from compressor_plugins.posttrain.owl import OwlConfig

__all__ = ["PatternPruner", "check_nm", "check_scope", "nm_label"]


def check_nm(value: tuple[int, int] | None) -> tuple[int, int] | None:
    """``[N, M]``: N weights kept in every group of M consecutive inputs, ``1 <= N < M``."""
    if value is None:
        return None
    keep, group = value
    if not 1 <= keep < group:
        raise ValueError(f"nm is [N, M] with 1 <= N < M (N kept of every M), got [{keep}, {group}]")
    return value


def nm_label(value: tuple[int, int]) -> str:
    """``(2, 4)`` -> ``'2:4'``."""
    return f"{value[0]}:{value[1]}"


def check_scope(nm: tuple[int, int] | None, scope: str) -> None:
    """An N:M pattern fixes every layer's sparsity: a global allocation cannot apply."""
    if nm is not None and scope in ("global", "owl"):
        raise ValueError(f"scope: {scope} allocates unstructured sparsity; drop it for nm")


class PatternConfig(OperatorConfig):
    """The settings Wanda and SparseGPT share: the pattern, the allocation and the data."""

    nm: tuple[int, int] | None = Field(
        None, description="[N, M]: keep N of every M consecutive inputs instead"
    )
    scope: Literal["layer", "global", "owl"] = Field(
        "layer",
        description="each layer at the target sparsity (layer), per-layer targets from "
        "one global magnitude threshold (global), or per block from its outliers (owl)",
    )
    owl: OwlConfig = Field(default_factory=OwlConfig, description="M and λ of scope: owl")
    partial_groups: Literal["skip", "error"] = Field(
        "skip",
        description="layers whose inputs are not a multiple of M: dense, with a warning "
        "(skip), or a config error naming them (error)",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)

    @field_validator("nm")
    @classmethod
    def _nm(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        return check_nm(value)

    @model_validator(mode="after")
    def _scope(self) -> PatternConfig:
        check_scope(self.nm, self.scope)
        return self


class PatternPruner(DataAwareOperator):
    """A data-aware pruner configured by ``nm`` (None: unstructured) and ``scope``: Wanda and
    SparseGPT. An N:M pattern fixes the sparsity, names the operator, and skips layers whose
    input width is not a multiple of M (with a warning)."""

    NAME: ClassVar[str]

    def bind(
        self, model: nn.Module, targets: list[Target], context: CompressionContext | None = None
    ) -> None:
        super().bind(model, targets, context)
        if self.config.nm is not None:
            self.warn_skipped(self.targets, self.config.nm[1], nm_label(self.config.nm))

    def fixed_sparsity(self) -> float | None:
        nm = self.config.nm
        return None if nm is None else 1.0 - nm[0] / nm[1]

    def label(self, sparsity: float | None) -> str:
        if self.config.nm is not None:
            return f"{self.NAME} {nm_label(self.config.nm)}"
        scope = "" if self.config.scope == "layer" else f" {self.config.scope}"
        return f"{self.NAME}{scope} {self.target(sparsity):g}"

    def compressed(
        self, weights: dict[str, torch.Tensor], sparsity: float
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's (new weight, mask) at ``sparsity``, which an N:M pattern fixes."""
        fixed = self.fixed_sparsity()
        if fixed is not None and abs(sparsity - fixed) > 1e-9:
            raise ValueError(f"{self.label(None)} has sparsity {fixed:g}, not {sparsity:g}")
        return self.compress(weights, sparsity)
