"""BatchNorm handling for extra forward passes and after one-shot compression (METHODS.md §6).

* :func:`freeze_bn_stats` — SAM's and CrAM's second pass must normalise with the batch's own
  statistics without polluting the running statistics (the perturbed or compressed weights are
  not the model that will be evaluated).
* :func:`recalibrate_bn` — after one-shot compression the running statistics describe the dense
  model; re-estimating them on a little training data (a cumulative average, unbiased for any
  number of batches) is what makes one-shot numbers fair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batchnorm_layers", "freeze_bn_stats", "recalibrate_bn"]


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every ``_BatchNorm`` subclass in ``model`` (BatchNorm1d/2d/3d, SyncBatchNorm, lazy ones)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def _buffers(layer: _BatchNorm) -> list[torch.Tensor]:
    names = ("running_mean", "running_var", "num_batches_tracked")
    found = (getattr(layer, name, None) for name in names)
    return [b for b in found if isinstance(b, torch.Tensor)]


_TORCH_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextmanager
def freeze_bn_stats(model: nn.Module, *, layers: list[_BatchNorm] | None = None) -> Iterator[None]:
    """Leave running mean/var and ``num_batches_tracked`` exactly unchanged inside the block.

    In train mode the forward still normalises with batch statistics. Two mechanisms, because
    each alone has a gap: ``track_running_stats=False`` makes torch's layers skip the update
    (and the ``num_batches_tracked`` increment) whatever the momentum, ``None`` included, and
    without the ``0·NaN`` hazard of a zero momentum; restoring a snapshot of the buffers on exit
    covers subclasses whose own ``forward`` updates them anyway. ``layers``: the model's
    BatchNorm layers when the caller has them already (a training step avoids the module walk).
    """
    found = batchnorm_layers(model) if layers is None else layers
    layers = [layer for layer in found if layer.track_running_stats]
    # torch's own layers honour track_running_stats exactly; snapshot only the others
    custom = [layer for layer in layers if type(layer) not in _TORCH_LAYERS]
    snapshots = [[b.clone() for b in _buffers(layer)] for layer in custom]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        with torch.no_grad():
            for layer in layers:
                layer.track_running_stats = True
            for layer, saved in zip(custom, snapshots, strict=True):
                for buffer, value in zip(_buffers(layer), saved, strict=True):
                    buffer.copy_(value)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    """Re-estimate BN running statistics from ``batches`` of model inputs, then leave
    ``model`` in eval mode.

    METHODS.md §6: reset running statistics, then a cumulative average (``momentum=None``, as
    ``torch.optim.swa_utils.update_bn`` does) in train mode under no grad, one forward pass per
    batch (``forward(model, inputs)``, default ``model(inputs)``), then ``eval()``. So any
    number of batches gives the plain average of their statistics (an exponential average
    would leave a few batches near the reset values).
    Weights are never touched; each layer's original momentum is restored. With no BN layer
    (or no batch) the model is only put in eval mode.
    """
    layers = [layer for layer in batchnorm_layers(model) if layer.track_running_stats]
    if not layers:
        model.eval()
        return model
    momenta = [layer.momentum for layer in layers]
    call = forward or (lambda m, inputs: m(inputs))
    model.train()
    try:
        started = False
        for inputs in batches:
            if not started:  # reset only once there is something to re-estimate from
                for layer in layers:
                    layer.reset_running_stats()
                    layer.momentum = None
                started = True
            call(model, inputs)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval()
    return model
