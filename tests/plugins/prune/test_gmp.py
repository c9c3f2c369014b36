"""GMP keeps pruned weights exactly zero, reaches its target exactly, and freezes after end."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressor import Session
from compressor.host.manager import Plugins
from tests.conftest import make_recipe

RECIPE = """\
name: gmp
model: {name: mlp}
data: {name: synthetic}
train: {epochs: 4}
optimizer: {name: %s}
modifiers:
  - type: gmp
    schedule: {kind: cubic, initial: 0.0, final: 0.8, start: 2, end: 2ep, every: 3}
"""


def train(model: nn.Module, session: Session, steps: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    optimizer = session.optimizer()
    snapshots = []
    for _ in range(steps):

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y) + session.penalty()
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
        snapshots.append({n: m.clone() for n, m in session.masks.state_dict().items()})
    return snapshots


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def test_pruned_weights_stay_exactly_zero_with_momentum_and_decay(plugins: Plugins) -> None:
    for optimizer in (
        "{name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.01}",
        "{name: adamw, weight_decay: 0.1}",
    ):
        net = model()
        recipe = make_recipe(RECIPE.replace("{name: %s}", optimizer), plugins)
        session = Session(net, recipe, steps_per_epoch=10, plugins=plugins)
        train(net, session, 40)
        for name in session.masks:
            weight = dict(net.named_parameters())[name]
            assert torch.all(weight[~session.masks.get(name)] == 0)
        assert abs(session.sparsity()["global"] - 0.8) <= 2 / session.sparsity()["eligible"]


def test_dense_before_start_and_masks_frozen_after_end(plugins: Plugins) -> None:
    net = model()
    session = Session(
        net,
        make_recipe(RECIPE.replace("%s", "sgd, lr: 0.1, momentum: 0.9"), plugins),
        steps_per_epoch=10,
        plugins=plugins,
    )
    snapshots = train(net, session, 35)
    assert snapshots[0] == {}  # after step 1: start is step 2
    at_end = snapshots[19]  # masks in force after step 20 (= end, 2 epochs)
    for later in snapshots[20:]:
        assert all(torch.equal(at_end[n], later[n]) for n in at_end)
    assert session.masks.sparsity() == session.sparsity()["zeros"] / session.sparsity()["eligible"]


def test_masks_updated_only_when_the_schedule_moves(plugins: Plugins) -> None:
    net = model()
    session = Session(
        net,
        make_recipe(RECIPE.replace("%s", "sgd, lr: 0.1"), plugins),
        steps_per_epoch=10,
        plugins=plugins,
    )
    gmp = session.modifiers[0]
    seen = []
    optimizer = session.optimizer()
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(21):

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
        seen.append(gmp.current)
    # every: 3 from start 2 -> held for 3 steps, exactly final at end (step 20)
    assert seen[4] == seen[5] == seen[6]
    assert seen[-2] == 0.8
