"""A test plugin: the synthetic clusters as a torch Dataset (DataLoader path), optionally with
random per-sample noise drawn from torch's RNG (augmentation)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset

from compressor.plugin_api import Data, DataInfo, DatasetBuilder, DatasetConfig, hookimpl
from compressor_plugins.zoo.datasets import gaussian_class_splits


class Noisy(Dataset[Any]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float) -> None:
        self.x, self.y, self.noise = x, y, noise

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if self.noise:
            x = x + self.noise * torch.randn(x.shape)
        return x, self.y[index]


class SyntheticDataset(DatasetBuilder):
    class Config(DatasetConfig):
        name: Literal["synthetic_dataset"]
        samples: int = 64
        test_samples: int = 32
        features: int = 8
        classes: int = 3
        augment: float = Field(0.0, ge=0)

    default_task = "classification"

    def info(self) -> DataInfo:
        return DataInfo((self.config.features,), self.config.classes)

    def train_size(self) -> int:
        return self.config.samples

    def build(self) -> Data:
        c = self.config
        splits = gaussian_class_splits(self.info(), c.samples, c.test_samples, 2.0, 1.0, 0)
        return Data(
            Noisy(splits.train_x, splits.train_y, c.augment),
            Noisy(splits.test_x, splits.test_y, 0.0),
            splits.info,
        )


@hookimpl
def register_datasets(register: Any) -> None:
    register(SyntheticDataset)
