"""Optimizers: base optimizer factories and wrappers that decide how gradients are obtained
(the two-pass skeleton SAM and CrAM share is ``compressor.kit.two_pass``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from compressor.contract.config import TypeConfig
from compressor.contract.context import CompressionContext
from compressor.contract.optim import DelegatingOptimizer


class OptimizerConfig(TypeConfig):
    """Shared fields of base optimizers."""

    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class OptimizerFactory:
    """Builds a base ``torch.optim.Optimizer`` from its config."""

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[OptimizerConfig]] = OptimizerConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError


class OptimizerWrapper(DelegatingOptimizer):
    """An optimizer that decides how gradients are obtained (SAM, CrAM) and then lets the
    base optimizer step. State, param groups and ``zero_grad`` belong to the base optimizer,
    so LR schedules and checkpoints work unchanged and transient buffers are never saved.
    """

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(
        self, config: Any, base: torch.optim.Optimizer, context: CompressionContext
    ) -> None:
        super().__init__(base)
        self.config = config
        self.context = context

    def describe(self) -> str:
        return type(self).__name__

    def report(self) -> dict[str, Any]:
        """What the run report says about the wrapper (``Session.finalize``, key ``wrapper``)."""
        return {"description": self.describe()}
