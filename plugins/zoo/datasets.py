"""Datasets: ``mnist1d`` (generated procedurally, never downloaded) and ``synthetic``.

MNIST-1D comes from ``mnist1d.data.make_dataset`` with the given seed; the result is cached
under ``$COMPRESSOR_CACHE`` (default ``~/.cache/compressor``) because generating 20k samples
takes a few seconds. ``synthetic`` is Gaussian class clusters for fast tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from compressor.plugin_api import (
    DataInfo,
    DatasetBuilder,
    DatasetConfig,
    DataSplits,
    atomic_save,
    hookimpl,
    load_checkpoint,
)

MNIST1D_LENGTH = 40


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


class MNIST1D(DatasetBuilder):
    class Config(DatasetConfig):
        name: Literal["mnist1d"]
        samples: int = Field(20_000, ge=100)
        seed: int = 42
        train_split: float = Field(0.8, gt=0, lt=1)

    default_task = "classification"

    def train_size(self) -> int:
        c = self.config
        per_class = c.samples // 10
        return int(per_class * 10 * c.train_split)

    def info(self) -> DataInfo:
        return DataInfo(input_shape=(MNIST1D_LENGTH,), num_classes=10)

    def build(self) -> DataSplits:
        c = self.config
        key = hashlib.sha256(json.dumps([c.samples, c.seed, c.train_split]).encode()).hexdigest()[
            :16
        ]
        path = cache_dir() / f"mnist1d-{key}.pt"
        if path.exists():
            data = load_checkpoint(path)
        else:
            data = self._generate()
            atomic_save(data, path)
        return DataSplits(data["x"], data["y"], data["x_test"], data["y_test"], self.info())

    def _generate(self) -> dict[str, torch.Tensor]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = self.config.samples
        args.seed = self.config.seed
        args.train_split = self.config.train_split
        # make_dataset reseeds numpy's and random's global generators: keep the caller's.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            raw = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        return {
            "x": torch.tensor(raw["x"], dtype=torch.float32),
            "y": torch.tensor(raw["y"], dtype=torch.long),
            "x_test": torch.tensor(raw["x_test"], dtype=torch.float32),
            "y_test": torch.tensor(raw["y_test"], dtype=torch.long),
        }


def gaussian_class_splits(
    info: DataInfo, samples: int, test_samples: int, center_scale: float, noise: float, seed: int
) -> DataSplits:
    """One Gaussian cluster per class around a random center (scaled by ``center_scale``)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(info.num_classes, *info.input_shape, generator=g) * center_scale

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, info.num_classes, (n,), generator=g)
        return centers[y] + noise * torch.randn(n, *info.input_shape, generator=g), y

    x, y = draw(samples)
    x_test, y_test = draw(test_samples)
    return DataSplits(x, y, x_test, y_test, info)


class Synthetic(DatasetBuilder):
    """Gaussian clusters, one per class, in ``features`` dimensions (tests and smoke runs)."""

    class Config(DatasetConfig):
        name: Literal["synthetic"]
        samples: int = Field(512, ge=8)
        test_samples: int = Field(256, ge=1)
        features: int = Field(40, gt=0)
        classes: int = Field(4, ge=2)
        noise: float = Field(1.0, ge=0)
        seed: int = 0

    default_task = "classification"

    def train_size(self) -> int:
        return int(self.config.samples)

    def info(self) -> DataInfo:
        return DataInfo(input_shape=(self.config.features,), num_classes=self.config.classes)

    def build(self) -> DataSplits:
        c = self.config
        return gaussian_class_splits(self.info(), c.samples, c.test_samples, 2.0, c.noise, c.seed)


@hookimpl
def register_datasets(register: Any) -> None:
    register(MNIST1D)
    register(Synthetic)
