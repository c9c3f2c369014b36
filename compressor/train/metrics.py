"""Classification metrics on in-memory tensors, shared by the training loop and evaluators."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["accuracy"]


@torch.no_grad()
def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """Top-1 accuracy (a fraction) and mean cross-entropy of ``model`` in eval mode.

    The model's train/eval mode is restored afterwards, so evaluating never changes a model.
    """
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty set")
    was_training = model.training
    device = next((p.device for p in model.parameters()), x.device)
    model.eval()
    correct, total_loss = 0, 0.0
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logits = model(xb)
            total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / x.shape[0], total_loss / x.shape[0]
