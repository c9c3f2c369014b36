"""What bench/step_cost.py steps: the shared hyperparameters, compressor's methods as recipe
wrappers, and one training step of a model through a compressor Session."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressor import Session
from compressor.recipe.schema import recipe_from_text

# One set of hyperparameters for compressor's recipes and the references alike.
SGD_SETTINGS: dict[str, Any] = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
SAM_RHO = 0.05
CRAM_RHO = 0.05
CRAM_SPARSITIES = [0.5, 0.7, 0.9]


def _flow(fields: dict[str, Any]) -> str:
    """A YAML flow mapping (JSON scalars and lists are valid YAML)."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "}"


def cram_wrapper(sparsities: list[float]) -> str:
    return (
        f"{{name: cram, rho: {json.dumps(CRAM_RHO)}, plus: true, sparse_grad: true,"
        f" operator: {{kind: magnitude, scope: global}}, sparsities: {json.dumps(sparsities)}}}"
    )


OPTIMIZER = _flow({"name": "sgd", **SGD_SETTINGS})
METHODS: dict[str, str | None] = {
    "sgd": None,
    "sam": f"{{name: sam, rho: {json.dumps(SAM_RHO)}}}",
    "cram+": cram_wrapper(CRAM_SPARSITIES),
}


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grads = dict[str, torch.Tensor]


def forward_backward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, fixed: Grads | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward pass; returns (loss, output). With ``fixed`` gradients
    (``--optimizer-only``) no pass runs: each parameter's gradient is set to a copy of its fixed
    one, so a step's remaining cost is the optimizer's own work (perturbing, masking,
    restoring, combining and the base step) plus these copies, alike for every method."""
    if fixed is None:
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        return loss, out
    for name, param in model.named_parameters():
        param.grad = fixed[name].clone()
    return torch.zeros((), device=x.device), torch.zeros(y.numel(), 10, device=x.device)


def make_stepper(
    model: nn.Module,
    wrapper: str | None,
    x: torch.Tensor,
    y: torch.Tensor,
    fixed: Grads | None = None,
) -> Callable[[], None]:
    text = f"name: bench\nmodel: {{name: mlp}}\ndata: {{name: synthetic}}\noptimizer: {OPTIMIZER}\n"
    if wrapper is not None:
        text += f"wrapper: {wrapper}\n"
    session = Session(model, recipe_from_text(text), steps_per_epoch=1000)
    optimizer = session.optimizer()

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        return forward_backward(model, x, y, F.cross_entropy, fixed)[0]

    def step() -> None:
        loss = optimizer.step(closure)
        session.step_end(loss.detach())

    step.session = session  # type: ignore[attr-defined]
    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step
