"""The evaluation context of a run of the built-in loop: its session plus its data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compressor.contract.context import Metric
from compressor.contract.data import DataInfo, DataSplits
from compressor.contract.errors import Loc
from compressor.contract.operator import Operator
from compressor.contract.schedule import Schedule
from compressor.engine.masks import MaskSet
from compressor.engine.session import Session
from compressor.train.metrics import accuracy

ACCURACY = Metric("accuracy", "test accuracy", higher_is_better=True, percent=True)


class RunContext:
    """Implements :class:`~compressor.contract.context.EvaluationContext` for a run: the
    session's compression context plus test metrics and data. The data is built on first use,
    so exporting a finished run never generates a dataset it does not need."""

    def __init__(
        self,
        session: Session,
        data: DataSplits | Callable[[], DataSplits],
        *,
        eval_batch_size: int = 1024,
        model_spec: dict[str, Any] | None = None,
        data_info: DataInfo | None = None,
    ) -> None:
        self.session = session
        self._data = data
        self.eval_batch_size = eval_batch_size
        self._model_spec = model_spec
        self._data_info = data_info

    @property
    def data(self) -> DataSplits:
        if callable(self._data):
            self._data = self._data()
        return self._data

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
        return self.session.build_operator(config, at=at, model=model)

    def build_schedule(self, config: Any, *, at: Loc = ("schedule",)) -> Schedule:
        return self.session.build_schedule(config, at=at)

    def evaluate(self) -> dict[str, float] | None:
        return self.session.evaluate()

    def sparsity(self) -> dict[str, Any]:
        return self.session.sparsity()

    # -- evaluation ------------------------------------------------------------------------

    @property
    def metric(self) -> Metric:
        return ACCURACY

    def measure(self, model: nn.Module) -> dict[str, float]:
        data = self.data
        acc, loss = accuracy(model, data.test_x, data.test_y, self.eval_batch_size)
        return {"accuracy": acc, "loss": loss}

    def calibration_inputs(self, samples: int, seed: int) -> torch.Tensor:
        x = self.data.train_x
        generator = torch.Generator().manual_seed(seed)
        return x[torch.randperm(x.shape[0], generator=generator)[: min(samples, x.shape[0])]]

    def example_inputs(self, batch: int) -> torch.Tensor:
        x = self.data.test_x
        return x[torch.arange(batch) % x.shape[0]].cpu()

    @property
    def model_spec(self) -> dict[str, Any] | None:
        return self._model_spec

    @property
    def data_info(self) -> DataInfo | None:
        return self._data_info
