"""Tiny models, recipes and a test-only operator plugin shared by the SAM/CrAM/one-shot tests."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressor import Session
from compressor.host.manager import Plugins, load_plugins
from compressor.recipe.schema import Recipe, recipe_from_text

torch.set_num_threads(1)

PLAIN_SGD = "{name: sgd, lr: 1.0}"


def tiny_model(seed: int = 0, bn: bool = True) -> nn.Module:
    """Linear-BN-ReLU-Linear: small enough for exact checks, with BN to test freezing."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 12)]
    if bn:
        layers.append(nn.BatchNorm1d(12))
    layers += [nn.ReLU(), nn.Linear(12, 3)]
    return nn.Sequential(*layers)


def tiny_batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def make_recipe(
    wrapper: str | None,
    optimizer: str = PLAIN_SGD,
    extra: str = "",
    plugins: Plugins | None = None,
) -> Recipe:
    text = f"""
name: test
model: {{name: mlp}}
data: {{name: synthetic}}
train: {{epochs: 1, seed: 0}}
optimizer: {optimizer}
"""
    if wrapper is not None:
        text += f"wrapper: {wrapper}\n"
    text += textwrap.dedent(extra)
    return recipe_from_text(text, registries=plugins.registries if plugins else None)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def make_closure(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    return closure


def train(
    model: nn.Module,
    recipe: Recipe,
    steps: int,
    *,
    plugins: Plugins | None = None,
    on_step: Callable[[Session, Any], None] | None = None,
) -> Session:
    """Run ``steps`` optimizer steps on a fixed sequence of tiny batches."""
    session = Session(model, recipe, steps_per_epoch=max(steps, 1), plugins=plugins)
    optimizer = session.optimizer()
    for i in range(steps):
        x, y = tiny_batch(i)
        loss = optimizer.step(make_closure(model, optimizer, x, y))
        session.step_end(loss.detach())
        if on_step is not None:
            on_step(session, optimizer)
    return session


def grads_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a train-mode copy of ``model`` (the original is left untouched)."""
    clone = copy.deepcopy(model)
    clone.train()
    clone.zero_grad(set_to_none=True)
    loss_of(clone, x, y).backward()
    return {n: p.grad.detach().clone() for n, p in clone.named_parameters()}  # type: ignore[union-attr]


def with_params(model: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            p.copy_(params[name])
    return clone


FIXED_OPERATOR_PLUGIN = '''
"""Test-only fixed-pattern operators (stand-ins for N:M): per-tensor magnitude at 1/2, 1/4."""
from typing import Literal

import torch

from compressor.plugin_api import Operator, OperatorConfig, hookimpl


class _Fixed(Operator):
    SPARSITY = 0.0

    def fixed_sparsity(self):
        return self.SPARSITY

    def compute_masks(self, weights, sparsity, generator):
        out = {}
        for name, weight in weights.items():
            w = weight.detach().abs().flatten()
            keep = w.numel() - int(round(self.SPARSITY * w.numel()))
            mask = torch.zeros_like(w, dtype=torch.bool)
            mask[torch.topk(w, keep).indices] = True
            out[name] = mask.view_as(weight)
        return out


class Half(_Fixed):
    SPARSITY = 0.5

    class Config(OperatorConfig):
        kind: Literal["half"]


class Quarter(_Fixed):
    SPARSITY = 0.25

    class Config(OperatorConfig):
        kind: Literal["quarter"]


@hookimpl
def register_operators(register):
    register(Half)
    register(Quarter)
'''


def plugins_with_fixed_operators(tmp_path: Path) -> Plugins:
    path = tmp_path / "fixed_ops.py"
    path.write_text(FIXED_OPERATOR_PLUGIN)
    return load_plugins([path], autoload=False)
