"""Small models for the channel-pruning tests, with non-trivial BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compressor_plugins.zoo.models import MNIST1DCNN
from compressor_plugins.zoo.resnet import ResNetCIFAR

RESNET_SHAPE = (3, 16, 16)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters: a pruned channel then emits a non-zero
    constant, which the masks and the exporter must get right."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def resnet20() -> ResNetCIFAR:
    torch.manual_seed(0)
    return randomize_bn(ResNetCIFAR(10, 3, input_shape=RESNET_SHAPE))  # type: ignore[return-value]


def mnist1d_cnn(width: int = 8) -> MNIST1DCNN:
    torch.manual_seed(0)
    return randomize_bn(MNIST1DCNN(40, 10, width))  # type: ignore[return-value]
