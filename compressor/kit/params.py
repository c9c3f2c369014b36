"""Optimizer parameters as flat lists (what gradient scalers and two-pass wrappers work on)."""

from __future__ import annotations

import torch


def params_with_grad(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter of the optimizer's groups that has a gradient, in group order."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
