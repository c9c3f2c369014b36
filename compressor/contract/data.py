"""Named model and dataset builders for ``compressor run``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from compressor.contract.config import TypeConfig


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
