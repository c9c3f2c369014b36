"""What plugins may use of a run: the compression context and, for evaluators, the data.

Plugins are typed against these protocols, never against the engine's classes: the engine's
:class:`~compressor.engine.session.Session` implements :class:`CompressionContext`, and the
built-in loop's run context implements :class:`EvaluationContext`. A test or another engine
can implement them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from compressor.contract.errors import Loc
from compressor.contract.steps import StepClock

if TYPE_CHECKING:
    from compressor.contract.data import DataInfo
    from compressor.contract.operator import Operator
    from compressor.contract.schedule import Schedule


class MaskStore(Protocol):
    """The run's persistent masks by parameter name (True = kept).

    A mask set here is applied to the gradient before every optimizer step and to the weight
    after it, so masked weights stay exactly zero.
    """

    def set(self, name: str, mask: torch.Tensor, *, apply: bool = True) -> None:
        """Store ``mask`` for parameter ``name`` and (by default) zero the masked weights now."""

    def get(self, name: str) -> torch.Tensor | None: ...

    def remove(self, name: str) -> None: ...

    def __contains__(self, name: object) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...


class CompressionContext(Protocol):
    """What modifiers, optimizer wrappers and observers may use during training."""

    @property
    def model(self) -> nn.Module:
        """The model being trained (the user's own names; wrappers are never exposed)."""

    @property
    def step(self) -> int:
        """Optimizer steps done so far."""

    @property
    def clock(self) -> StepClock:
        """Resolves ``"2ep"`` specs to steps; knows steps per epoch and the run's length."""

    @property
    def generator(self) -> torch.Generator:
        """The compression RNG: seeded alike on every rank, saved in checkpoints."""

    @property
    def masks(self) -> MaskStore: ...

    def build_operator(
        self, config: Any, *, at: Loc = ("operator",), model: nn.Module | None = None
    ) -> Operator:
        """Instantiate an operator config bound to the tensors it selects in ``model`` (default:
        the run's model). Raises ConfigError located at ``at`` if it selects none."""

    def build_schedule(self, config: Any, *, at: Loc = ("schedule",)) -> Schedule:
        """Instantiate a schedule config against the run's clock."""

    def evaluate(self) -> dict[str, float] | None:
        """Test metrics of the model as it is now, or None if the loop measures nothing."""

    def sparsity(self) -> dict[str, Any]:
        """Exact zeros over the eligible weights: ``global``, ``zeros``, ``eligible``, per layer;
        ``compressed``: ``sparsity``, ``zeros``, ``total``, ``tensors`` over the masked ones."""

    def example_inputs(self, batch: int = 1) -> Any:
        """Model inputs for tracing (real ones from the data when the loop has them; token ids
        for language models), or None when the run has none."""

    def calibration_batches(
        self, samples: int, seed: int, batches: int, batch_size: int
    ) -> Iterator[Any] | None:
        """Calibration batches of model inputs, as :meth:`EvaluationContext.calibration_batches`
        gives them, for operators that compress from data (activation statistics); None when
        the run has no data (a :class:`Session` in a user's loop that was given none). Calling
        it reads nothing: data is drawn only when the iterator is consumed."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Call ``model`` on inputs as the task does (keyword arguments for a mapping)."""


@dataclass(frozen=True)
class Metric:
    """The headline metric of a run's task (what tables and plots show)."""

    name: str
    title: str
    higher_is_better: bool = True
    percent: bool = False


class EvaluationContext(CompressionContext, Protocol):
    """What evaluators and exporters may use once training is done: the context plus data."""

    @property
    def metric(self) -> Metric:
        """The headline metric; :meth:`measure` returns it under ``metric.name``."""

    def measure(self, model: nn.Module) -> dict[str, float]:
        """Test-set metrics of ``model`` (any model, e.g. a compressed copy), in eval mode,
        keyed by the task's metric names (``metric.name`` among them)."""

    def calibration_batches(
        self, samples: int, seed: int, batches: int, batch_size: int
    ) -> Iterator[Any]:
        """``batches`` batches of model inputs, each ``batch_size`` samples drawn (without
        replacement within a batch) from a fixed subset of ``samples`` training samples chosen
        with ``seed`` — evaluation transforms, on the model's device."""

    @property
    def model_spec(self) -> dict[str, Any] | None:
        """The recipe's ``model:`` section, to rebuild the architecture (None if unknown)."""

    @property
    def data_info(self) -> DataInfo | None:
        """Input shape and classes of the data (None if unknown)."""
