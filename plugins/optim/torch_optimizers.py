"""Base optimizers: ``sgd`` and ``adamw`` (torch's implementations)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import OptimizerConfig, OptimizerFactory, hookimpl


class SGD(OptimizerFactory):
    class Config(OptimizerConfig):
        name: Literal["sgd"]
        momentum: float = Field(0.0, ge=0, lt=1)
        nesterov: bool = False
        dampening: float = Field(0.0, ge=0)

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(
            params,
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.nesterov,
            dampening=c.dampening,
            weight_decay=c.weight_decay,
        )


class AdamW(OptimizerFactory):
    class Config(OptimizerConfig):
        name: Literal["adamw"]
        lr: float = Field(1e-3, gt=0)
        betas: tuple[float, float] = (0.9, 0.999)
        eps: float = Field(1e-8, gt=0)
        weight_decay: float = Field(0.01, ge=0)

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(
            params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay
        )


@hookimpl
def register_optimizers(register: Callable[[type], None]) -> None:
    register(SGD)
    register(AdamW)
