"""The public base classes a plugin subclasses, and the config base they validate with.

Every type a recipe can name is a class with a nested pydantic ``Config`` (subclass of
:class:`TypeConfig`) carrying a ``Literal`` tag field (``kind``, ``type`` or ``name``, as the
base class's ``TAG`` says). The engine builds discriminated unions over all registered configs,
so a third-party type validates exactly like a built-in one.

A config field whose value is itself a registered type uses the ``*Spec`` aliases below
(``operator: OperatorSpec``); the engine swaps in the union of all registered types at load.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch import nn

from compressor.contract.optim import DelegatingOptimizer
from compressor.contract.selection import SelectionConfig, Target
from compressor.contract.steps import StepClock

if TYPE_CHECKING:
    from compressor.engine.session import Session

__all__ = [
    "DataInfo",
    "DataSplits",
    "DatasetBuilder",
    "DatasetConfig",
    "Evaluator",
    "ModelBuilder",
    "Modifier",
    "Operator",
    "OperatorConfig",
    "OperatorSpec",
    "OptimizerConfig",
    "OptimizerFactory",
    "OptimizerWrapper",
    "RegistryRef",
    "Schedule",
    "ScheduleSpec",
    "Sparsity",
    "Target",
    "TypeConfig",
]


class TypeConfig(BaseModel):
    """Base of every plugin config: unknown keys are errors and configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RegistryRef:
    """Marks a config field whose value is any type registered under ``kind``."""

    kind: str


class OperatorConfig(TypeConfig, SelectionConfig):
    """Base config of an operator: the tag plus which tensors it compresses."""


def check_sparsity(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {value}")
    return value


Sparsity = Annotated[float, AfterValidator(check_sparsity)]
"""A fraction of weights removed: 0 <= s < 1."""

OperatorSpec = Annotated[OperatorConfig, RegistryRef("operators")]
ScheduleSpec = Annotated[TypeConfig, RegistryRef("schedules")]


class Operator:
    """Computes masks (and, for projections, values) for a set of named weight tensors.

    Operators never modify a model: they return masks and projected tensors; applying them is
    the core's job (:class:`compressor.masks.MaskSet`).
    """

    TAG: ClassVar[str] = "kind"
    Config: ClassVar[type[OperatorConfig]] = OperatorConfig

    def __init__(self, config: Any) -> None:
        self.config = config
        self.targets: list[Target] = []

    def bind(self, model: nn.Module, targets: list[Target]) -> None:
        """Called once with the model and the tensors selected by the config."""
        self.targets = targets

    def fixed_sparsity(self) -> float | None:
        """The sparsity the pattern implies (0.5 for 2:4), or None if it takes any target."""
        return None

    def masks(
        self,
        weights: Mapping[str, torch.Tensor],
        sparsity: float | None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Boolean keep-masks (True = kept) for ``weights`` at target ``sparsity``."""
        raise NotImplementedError

    def project(
        self,
        weights: Mapping[str, torch.Tensor],
        sparsity: float | None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The compressed tensors ``C(w)``; masking by default, projections override it."""
        masks = self.masks(weights, sparsity, generator=generator)
        return {name: weights[name] * masks[name] for name in masks}


class Schedule:
    """A pure function of the optimizer step (a sparsity, a radius or an LR factor)."""

    TAG: ClassVar[str] = "kind"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any, clock: StepClock) -> None:
        self.config = config
        self.clock = clock

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def milestones(self) -> list[int]:
        """Steps worth showing in ``compressor explain`` (start, end, ...)."""
        return [0]

    def span(self) -> tuple[int, int] | None:
        """``(start, end)`` in steps when the schedule ramps, else None."""
        return None


class Modifier:
    """A recipe modifier: changes the model or the loss over training (GMP, ADMM, ...).

    The session calls :meth:`update` at step 0 and after every optimizer step, with
    ``session.step`` equal to the number of steps done.
    """

    TAG: ClassVar[str] = "type"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any, session: Session) -> None:
        self.config = config

    def masked_names(self) -> set[str]:
        """Parameter names this modifier writes masks for (two modifiers may not overlap)."""
        return set()

    def update(self, session: Session) -> None:
        """Update masks or internal state for step ``session.step``."""

    def penalty(self, session: Session) -> torch.Tensor | None:
        """A term to add to the loss (e.g. ADMM's augmented Lagrangian), or None."""
        return None

    def after_optimizer_step(self, session: Session) -> None:
        """Re-impose structure right after each optimizer step (after masks are applied)."""

    def timeline(self) -> list[tuple[int, str]]:
        """``(step, description)`` milestones for ``compressor explain``."""
        return []

    def report(self, session: Session) -> dict[str, Any]:
        """Metrics for the run report."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


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

    def __init__(self, config: Any, base: torch.optim.Optimizer, session: Session) -> None:
        super().__init__(base)
        self.config = config
        self.session = session

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class DataInfo:
    """What a model builder needs to know about the data."""

    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class DataSplits:
    """In-memory tensors: fast batching without DataLoader overhead for small data."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DataInfo


class DatasetConfig(TypeConfig):
    """Shared fields of datasets."""

    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(1024, gt=0)


class DatasetBuilder:
    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[DatasetConfig]] = DatasetConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    def train_size(self) -> int:
        """Number of training samples, known without building (resolves epochs at load)."""
        raise NotImplementedError

    def info(self) -> DataInfo:
        """Input shape and class count, known without building."""
        raise NotImplementedError

    def build(self) -> DataSplits:
        raise NotImplementedError


class ModelBuilder:
    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    def build(self, info: DataInfo) -> nn.Module:
        raise NotImplementedError


class Evaluator:
    """A configurable evaluation, keyed by its tag under ``evaluate:`` in a recipe."""

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    def check(self, session: Session) -> None:
        """Raise ConfigError (loc relative to this config) if it cannot work for the session's
        model; called when the run is prepared, so mistakes surface before training."""

    def run(self, session: Session, model: nn.Module, data: DataSplits) -> dict[str, Any]:
        raise NotImplementedError
