"""CIFAR-style ResNet-20 (He et al. 2016, §4.2) and a seeded synthetic CIFAR-shaped dataset.

Three stages of three basic blocks, widths 16/32/64, global average pooling, a linear
classifier. Shortcuts that change shape use **option B** (1×1 strided conv + BatchNorm), not the
paper's option A (zero padding): Torch-Pruning's dependency graph traces a 1×1 conv shortcut as an
ordinary coupled layer, while option A's pad/slice has no clean channel mapping. Option B adds
two small convs (~0.01M weights, ~0.6M MACs) to the 0.27M-weight, ~41M-MAC network.

The builder needs no torchvision. ``cifar_synthetic`` draws random images whose per-class mean
differs slightly (so a smoke run can learn something) from a seeded generator: nothing is
downloaded.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    DataInfo,
    DatasetBuilder,
    DatasetConfig,
    DataSplits,
    ModelBuilder,
    TypeConfig,
    hookimpl,
)
from compressor_plugins.zoo.datasets import gaussian_class_splits


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for small images; ``blocks=3`` is ResNet-20."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        blocks: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        input_shape: tuple[int, ...] = (3, 32, 32),
    ) -> None:
        super().__init__()
        # Read by the channel operator to trace the dependency graph without a config entry.
        self.example_input_shape = tuple(input_shape)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for index, planes in enumerate(widths):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class ResNet20Builder(ModelBuilder):
    class Config(TypeConfig):
        name: Literal["resnet20"]
        width: int = Field(16, gt=0, description="first-stage width; stages use w, 2w, 4w")

    def build(self, info: DataInfo) -> nn.Module:
        if len(info.input_shape) != 3:
            raise ValueError(f"resnet20 needs (C, H, W) inputs, got {info.input_shape}")
        w = self.config.width
        return ResNetCIFAR(
            info.num_classes, info.input_shape[0], 3, (w, 2 * w, 4 * w), info.input_shape
        )


class CIFARSynthetic(DatasetBuilder):
    """Random ``(C, H, W)`` images with a small class-dependent mean shift (smoke runs)."""

    class Config(DatasetConfig):
        name: Literal["cifar_synthetic"]
        samples: int = Field(1024, ge=8)
        test_samples: int = Field(256, ge=1)
        image_size: int = Field(32, ge=4)
        channels: int = Field(3, ge=1)
        classes: int = Field(10, ge=2)
        signal: float = Field(0.5, ge=0, description="scale of the per-class mean image")
        seed: int = 0

    default_task = "classification"

    def train_size(self) -> int:
        return int(self.config.samples)

    def info(self) -> DataInfo:
        c = self.config
        return DataInfo((c.channels, c.image_size, c.image_size), c.classes)

    def build(self) -> DataSplits:
        c = self.config
        return gaussian_class_splits(self.info(), c.samples, c.test_samples, c.signal, 1.0, c.seed)


@hookimpl
def register_models(register: Any) -> None:
    register(ResNet20Builder)


@hookimpl
def register_datasets(register: Any) -> None:
    register(CIFARSynthetic)
