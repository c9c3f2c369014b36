"""Tasks: what a batch means, the loss to train on and the metrics to report.

The training loop, evaluation, BN re-calibration and every report go through the run's task;
nothing in the engine assumes cross-entropy, labels or accuracy. A task is registered through
``register_tasks`` and chosen by a recipe's ``task:`` section (by default, the dataset's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from compressor.contract.config import TypeConfig
from compressor.contract.context import Metric


def to_device(batch: Any, device: torch.device | str, *, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking=non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(v, device, non_blocking=non_blocking) for v in batch)
    return batch


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping (Hugging Face style), else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: the tensor itself, or ``output.logits`` (Hugging Face)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


class Task:
    """Loss and metrics of one kind of problem.

    Subclasses give :attr:`metric` (the headline metric: its name is a key of
    :meth:`finish`'s result), :meth:`inputs`, :meth:`loss`, and the metric accumulation
    :meth:`update` / :meth:`finish`.
    """

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = TypeConfig
    metric: ClassVar[Metric]

    def __init__(self, config: Any) -> None:
        self.config = config

    def prepare(self, batch: Any, generator: torch.Generator) -> Any:
        """Turn a loaded batch into a training or evaluation batch, once per batch (e.g. draw
        a masked-LM mask). Random draws use ``generator``, seeded from (seed, step), so every
        pass of a two-pass step and a resumed run see the same batch. Default: unchanged."""
        return batch

    def inputs(self, batch: Any) -> Any:
        """What the model is called with (a tensor, or a mapping of keyword arguments)."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Any) -> Any:
        return call_model(model, self.inputs(batch))

    def loss(self, output: Any, batch: Any) -> torch.Tensor:
        """The mean training loss of the batch (a scalar tensor with a gradient)."""
        raise NotImplementedError

    def size(self, batch: Any) -> int:
        """How many samples ``batch`` holds (the first dimension of its inputs)."""
        inputs = self.inputs(batch)
        if isinstance(inputs, Mapping):
            inputs = next(iter(inputs.values()))
        return int(inputs.shape[0])

    def update(self, totals: dict[str, float], output: Any, batch: Any) -> None:
        """Add one evaluation batch's sums to ``totals``."""
        raise NotImplementedError

    def finish(self, totals: dict[str, float]) -> dict[str, float]:
        """The metrics from the accumulated sums (``metric.name`` among them)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterable[Any], device: torch.device
    ) -> dict[str, float]:
        """Metrics of ``model`` over ``batches`` in eval mode; the model's mode is restored."""
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        try:
            prepares = type(self).prepare is not Task.prepare
            for index, batch in enumerate(batches):
                batch = to_device(batch, device)
                if prepares:  # the same draw at every evaluation: comparable numbers
                    batch = self.prepare(batch, torch.Generator().manual_seed(index))
                self.update(totals, self.forward(model, batch), batch)
        finally:
            model.train(was_training)
        if not totals:
            raise ValueError("cannot evaluate on an empty set")
        return self.finish(totals)
