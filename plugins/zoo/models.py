"""Model builders: ``mnist1d_cnn`` (the BENCHMARKS.md Q model) and a tiny ``mlp``."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import DataInfo, ModelBuilder, TypeConfig, hookimpl


class MNIST1DCNN(nn.Module):
    """Four conv layers (kernels 5, 3, 3, 3; strides 1, 2, 1, 2), each with BatchNorm and
    ReLU, then a linear classifier over the flattened features (~44k prunable weights at
    width 64 and length 40)."""

    KERNELS = (5, 3, 3, 3)
    STRIDES = (1, 2, 1, 2)

    def __init__(
        self, length: int, num_classes: int, width: int = 64, in_channels: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for kernel, stride in zip(self.KERNELS, self.STRIDES, strict=True):
            layers += [
                nn.Conv1d(channels, width, kernel, stride=stride, padding=kernel // 2, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
            length = math.floor((length + 2 * (kernel // 2) - kernel) / stride) + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))


class MNIST1DCNNBuilder(ModelBuilder):
    class Config(TypeConfig):
        name: Literal["mnist1d_cnn"]
        width: int = Field(64, gt=0)

    def build(self, info: DataInfo) -> nn.Module:
        channels, length = (
            (1, info.input_shape[0]) if len(info.input_shape) == 1 else info.input_shape[:2]
        )
        return MNIST1DCNN(length, info.num_classes, self.config.width, channels)


class MLPBuilder(ModelBuilder):
    """Flatten, then Linear+ReLU per hidden size, then a Linear classifier."""

    class Config(TypeConfig):
        name: Literal["mlp"]
        hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64])

    def build(self, info: DataInfo) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(info.input_shape)
        for hidden in self.config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, info.num_classes))
        return nn.Sequential(*layers)


@hookimpl
def register_models(register: Any) -> None:
    register(MNIST1DCNNBuilder)
    register(MLPBuilder)
