"""The evaluation context of a run of the built-in loop: its session, task and data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from compressor.contract.context import Metric
from compressor.contract.data import DataInfo
from compressor.contract.errors import Loc
from compressor.contract.operator import Operator
from compressor.contract.schedule import Schedule
from compressor.contract.task import Task, call_model, to_device
from compressor.engine.masks import MaskSet
from compressor.engine.session import Session
from compressor.train.batches import BatchSource


class RunContext:
    """Implements :class:`~compressor.contract.context.EvaluationContext` for a run: the
    session's compression context plus the task's metrics and the data. The data is built on
    first use, so exporting a finished run never generates a dataset it does not need."""

    def __init__(
        self,
        session: Session,
        task: Task,
        batches: BatchSource | Callable[[], BatchSource],
        *,
        model_spec: dict[str, Any] | None = None,
        data_info: DataInfo | None = None,
    ) -> None:
        self.session = session
        self.task = task
        self._batches = batches
        self._model_spec = model_spec
        self._data_info = data_info

    @property
    def batches(self) -> BatchSource:
        if callable(self._batches):
            self._batches = self._batches()
        return self._batches

    # -- the compression context (the session's) ---------------------------------------------

    @property
    def model(self) -> nn.Module:
        return self.session.model

    @property
    def step(self) -> int:
        return self.session.step

    @property
    def clock(self) -> Any:
        return self.session.clock

    @property
    def generator(self) -> torch.Generator:
        return self.session.generator

    @property
    def masks(self) -> MaskSet:
        return self.session.masks

    def build_operator(
        self, config: Any, *, at: Loc = ("operator",), model: nn.Module | None = None
    ) -> Operator:
        return self.session.build_operator(config, at=at, model=model, context=self)

    def build_schedule(self, config: Any, *, at: Loc = ("schedule",)) -> Schedule:
        return self.session.build_schedule(config, at=at)

    def evaluate(self) -> dict[str, float] | None:
        return self.session.evaluate()

    def sparsity(self) -> dict[str, Any]:
        return self.session.sparsity()

    # -- evaluation ------------------------------------------------------------------------

    @property
    def metric(self) -> Metric:
        return self.task.metric

    def _device(self, model: nn.Module) -> torch.device:
        return next((p.device for p in model.parameters()), torch.device("cpu"))

    def measure(self, model: nn.Module) -> dict[str, float]:
        return self.task.evaluate(model, self.batches.test(), self._device(model))

    def calibration_batches(
        self, samples: int, seed: int, batches: int, batch_size: int
    ) -> Iterator[Any]:
        device = self._device(self.model)
        for batch in self.batches.calibration(samples, seed, batches, batch_size):
            yield to_device(self.task.inputs(batch), device)

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        return call_model(model, inputs)

    def example_inputs(self, batch: int = 1) -> Any:
        return to_device(self.task.inputs(self.batches.example(batch)), "cpu")

    @property
    def model_spec(self) -> dict[str, Any] | None:
        return self._model_spec

    @property
    def data_info(self) -> DataInfo | None:
        return self._data_info
