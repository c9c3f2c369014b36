"""Optimizers: base optimizer factories, wrappers that decide how gradients are obtained, and
the two-pass skeleton that SAM- and CrAM-like wrappers share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compressor.contract.bn import batchnorm_layers, freeze_bn_stats
from compressor.contract.config import TypeConfig
from compressor.contract.context import CompressionContext
from compressor.contract.optim import DelegatingOptimizer, params_with_grad


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


class TwoPassWrapper(OptimizerWrapper):
    """Two forward/backward passes per step, the skeleton SAM and CrAM share.

    Pass 1 at the weights ``w`` gives ``g`` (BatchNorm statistics update normally); ``w`` is
    saved, :meth:`perturb` moves the weights; pass 2 runs there with BatchNorm running
    statistics frozen; ``w`` is restored exactly; :meth:`combine` turns pass 2's gradients
    (in ``p.grad``) and ``g`` into the gradient the base optimizer steps with. The returned
    loss is pass 1's. Saved weights and ``g`` live for one step only (never in ``state_dict``).
    """

    def perturb(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Move ``params`` in place (no grad) to where pass 2 is evaluated."""
        raise NotImplementedError

    def combine(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Set each ``p.grad`` from pass 2's gradient and pass 1's ``grads`` (default: keep
        pass 2's, as SAM does)."""

    def extra_restored(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Tensors without a gradient that :meth:`perturb` also changes (restored with ``w``)."""
        return []

    _bn: list[_BatchNorm] | None = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise TypeError(f"{type(self).__name__} needs a closure: call optimizer.step(closure)")
        with torch.enable_grad():
            loss = closure()
        params = params_with_grad(self.base)
        if not params:
            return loss
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        restore = params + self.extra_restored(params)
        with torch.no_grad():
            saved = [p.detach().clone() for p in restore]
            self.perturb(params, grads)
        for p in params:
            p.grad = None  # pass 2 writes fresh gradients, whatever the closure's zero_grad does
        if self._bn is None:  # the model's structure is fixed while it trains
            self._bn = batchnorm_layers(self.context.model)
        try:
            with freeze_bn_stats(self.context.model, layers=self._bn), torch.enable_grad():
                closure()
        finally:
            with torch.no_grad():
                torch._foreach_copy_(restore, saved)
        with torch.no_grad():
            self.combine(params, grads)
        self.base.step()
        return loss
