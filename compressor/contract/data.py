"""Data and models for ``compressor run``: named builders, and what a dataset builder returns.

A dataset builder returns either :class:`Data` — ``torch.utils.data.Dataset`` objects that the
built-in loop reads through a ``DataLoader`` (workers, pinned memory, any size) — or
:class:`DataSplits`, in-memory tensors batched by indexing (the fast path for small data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from compressor.contract.config import TypeConfig


@dataclass(frozen=True)
class DataInfo:
    """What a model builder needs to know about the data.

    ``num_classes`` is the vocabulary size for token data; ``input_dtype`` is ``torch.int64``
    for token ids, so example inputs (tracing, latency) are real token ids, not floats.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    input_dtype: torch.dtype = torch.float32

    def example(self, batch: int = 1) -> torch.Tensor:
        """A zero input batch of the data's shape and dtype (token id 0 for token data)."""
        return torch.zeros(batch, *self.input_shape, dtype=self.input_dtype)


@dataclass(frozen=True)
class Data:
    """Datasets for training, testing and calibration.

    ``calibration`` holds training samples as evaluation sees them (no augmentation), for BN
    re-calibration and data-aware compression; by default the training set itself.
    ``collate`` is the DataLoader's ``collate_fn`` (default: torch's). ``random``: loading a
    training sample may draw random numbers (augmentation), so the loop loads each under its
    own seed to keep resume exact; a dataset that never does says False and skips that cost.
    """

    train: Dataset[Any]
    test: Dataset[Any]
    info: DataInfo
    calibration: Dataset[Any] | None = None
    collate: Callable[[list[Any]], Any] | None = None
    random: bool = True

    def calibration_set(self) -> Dataset[Any]:
        return self.train if self.calibration is None else self.calibration


@dataclass(frozen=True)
class DataSplits:
    """In-memory tensors: batched by indexing, without DataLoader overhead (small data)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: DataInfo

    @property
    def train(self) -> TensorDataset:
        return TensorDataset(self.train_x, self.train_y)

    @property
    def test(self) -> TensorDataset:
        return TensorDataset(self.test_x, self.test_y)

    def calibration_set(self) -> TensorDataset:
        return self.train

    def to(self, device: str | torch.device) -> DataSplits:
        return DataSplits(
            self.train_x.to(device),
            self.train_y.to(device),
            self.test_x.to(device),
            self.test_y.to(device),
            self.info,
        )


class DatasetConfig(TypeConfig):
    """Shared fields of datasets: batching and how the DataLoader reads them."""

    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(1024, gt=0)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: in-process)")
    pin_memory: bool = Field(False, description="page-locked host memory for faster GPU copies")
    drop_last: bool = Field(False, description="drop the last, smaller training batch of an epoch")
    persistent_workers: bool = Field(True, description="keep workers alive between epochs")
    prefetch_factor: int | None = Field(None, gt=0, description="batches loaded ahead per worker")
    in_memory: bool = Field(
        True,
        description="index in-memory tensors directly (no DataLoader); false reads them "
        "through a DataLoader like any dataset",
    )


class DatasetBuilder:
    """Builds a run's data from its config. ``default_task`` names the task a recipe gets
    when it has no ``task:`` section (a dataset knows what its labels mean)."""

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[DatasetConfig]] = DatasetConfig
    default_task: ClassVar[str | None] = None
    folder_of: Callable[[str], Path] | None = None
    """Set by the engine: the folder a relative path in config field ``field`` resolves
    against (the recipe's; the current directory for ``--set``)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def local_path(self, value: str | Path, field: str) -> Path:
        """``value`` (written in config field ``field``) as an absolute path: a relative one
        resolves against the folder of the file it was written in (docs/data.md)."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        return (self.folder_of(field) if self.folder_of else Path.cwd()) / path

    def train_size(self) -> int:
        """Number of training samples, known without building (resolves epochs at load)."""
        raise NotImplementedError

    def info(self) -> DataInfo:
        """Input shape and class count, known without building."""
        raise NotImplementedError

    def build(self) -> Data | DataSplits:
        raise NotImplementedError


class ModelBuilder:
    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    def build(self, info: DataInfo) -> nn.Module:
        raise NotImplementedError
