"""ADMM modifier (METHODS.md §8): penalty gradient, convergence on a quadratic, masked
fine-tuning that Adam + weight decay cannot break, exact resume, exact metrics, recipe smoke."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

os.environ.setdefault("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(1)

from compressor import Session  # noqa: E402
from compressor.host.manager import Plugins, load_plugins  # noqa: E402
from compressor.kit.files import atomic_save  # noqa: E402
from compressor.kit.files import load_checkpoint as load  # noqa: E402
from compressor.recipe.overrides import apply_overrides  # noqa: E402
from compressor.recipe.schema import Recipe, recipe_from_text  # noqa: E402
from compressor_plugins.blocks.unify import PRUNED, UNIFIED  # noqa: E402
from compressor_plugins.blocks.view import layout_of, to_blocks  # noqa: E402
from tests.support import ROOT  # noqa: E402

RECIPE = """\
name: admm-test
model: {{name: mlp}}
data: {{name: synthetic}}
train: {{epochs: 1}}
optimizer: {optimizer}
modifiers:
  - type: admm
    block: {block}
    prune_ratio: {prune}
    unify_ratio: {unify}
    rho: {rho}
    update_every: {every}
    finish_at: {finish}
    unified: {unified}
"""


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return load_plugins(autoload=False)


def make_recipe(plugins: Plugins, **fields: Any) -> Recipe:
    values = {
        "optimizer": "{name: sgd, lr: 0.1, momentum: 0.9}",
        "block": "[2, 2]",
        "prune": 0.5,
        "unify": 0.25,
        "rho": "{initial: 0.01, multiplier: 1.5, cap: 1.0}",
        "every": 3,
        "finish": 20,
        "unified": "shared_magnitude",
        **fields,
    }
    return recipe_from_text(RECIPE.format(**values), registries=plugins.registries)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))


def train(model: nn.Module, session: Session, steps: int, optimizer: Any = None) -> Any:
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    optimizer = optimizer or session.optimizer()
    for _ in range(steps):
        i = session.step % 4
        xb, yb = x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16]

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb) + session.penalty()
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
    return optimizer


def test_penalty_gradient_is_rho_times_w_minus_z_plus_u(plugins: Plugins) -> None:
    model = small_net()
    session = Session(model, make_recipe(plugins), steps_per_epoch=10, plugins=plugins)
    train(model, session, 7)  # two Z/U updates: Z and U are nontrivial
    admm = session.modifiers[0]
    assert admm.Z is not None and admm.U is not None
    assert all(float(u.abs().sum()) > 0 for u in admm.U.values())
    model.zero_grad(set_to_none=True)
    session.penalty().backward()
    for name, param in model.named_parameters():
        if name in admm.Z:
            expected = admm.rho * (param.detach() - admm.Z[name] + admm.U[name])
            torch.testing.assert_close(param.grad, expected, rtol=1e-6, atol=1e-7)
        else:
            assert param.grad is None  # biases carry no penalty


@pytest.mark.parametrize(
    ("rho", "lr", "every"),
    [
        ("{initial: 1.0, multiplier: 1.0}", 0.5, 1),  # exact W-step: lr = 1/(1 + rho)
        ("{initial: 2.0, multiplier: 1.0, cap: null}", 1 / 3, 1),
        ("{initial: 1.0, multiplier: 1.3, cap: 4.0}", 0.1, 10),  # inexact W-steps, ramped rho
    ],
)
def test_admm_on_a_quadratic_closes_the_gap_and_reaches_the_projection(
    plugins: Plugins, rho: str, lr: float, every: int
) -> None:
    recipe = make_recipe(
        plugins, optimizer=f"{{name: sgd, lr: {lr}}}", rho=rho, every=every, finish=10**6
    )
    torch.manual_seed(0)
    model = nn.Linear(12, 8, bias=False)
    target = torch.randn(8, 12)
    with torch.no_grad():
        model.weight.copy_(
            target
        )  # start at the dense optimum, as ADMM starts from a trained model
    session = Session(model, recipe, steps_per_epoch=10, plugins=plugins)
    optimizer = session.optimizer()
    for _ in range(40 * every):

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = 0.5 * (model.weight - target).pow(2).sum() + session.penalty()
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
    admm = session.modifiers[0]
    primal = [h["primal"] for h in admm.history]
    assert len(primal) == 41
    assert all(b <= a + 1e-6 for a, b in zip(primal, primal[1:], strict=False))
    assert primal[-1] < 1e-5 < primal[0]
    z = admm.Z["weight"]
    projected = admm.operator.project({"weight": target}, None)["weight"]
    torch.testing.assert_close(z, projected, rtol=0, atol=1e-5)
    f_z = 0.5 * float((z - target).pow(2).sum())
    assert f_z == pytest.approx(0.5 * float((target - projected).pow(2).sum()), rel=1e-5)


def test_rho_ramps_to_its_cap_and_rescales_the_dual(plugins: Plugins) -> None:
    model = small_net()
    session = Session(model, make_recipe(plugins, finish=100), steps_per_epoch=10, plugins=plugins)
    admm = session.modifiers[0]
    train(model, session, 5)  # update at step 3
    u_before = {n: u.clone() for n, u in admm.U.items()}
    w = {n: p.detach().clone() for n, p in model.named_parameters() if n in admm.U}
    rho_before = admm.rho
    train(model, session, 1)  # step 6: Z/U update, then rho x1.5 and U x (1/1.5)
    for name in admm.U:
        unscaled = u_before[name] + w_after(model, name) - admm.Z[name]
        torch.testing.assert_close(admm.U[name], unscaled * rho_before / admm.rho)
    assert admm.rho == pytest.approx(rho_before * 1.5)
    train(model, session, 60)
    assert admm.rho == 1.0
    assert w  # weights were captured


def w_after(model: nn.Module, name: str) -> torch.Tensor:
    return dict(model.named_parameters())[name].detach()


def check_structure(model: nn.Module, admm: Any) -> None:
    for name, param in model.named_parameters():
        if name not in admm.labels:
            continue
        layout = layout_of(param, (2, 2))
        blocks, valid = to_blocks(param.detach(), layout), layout.valid()
        labels = admm.labels[name]
        assert torch.all(blocks[labels == PRUNED] == 0)
        for row, ok in zip(blocks[labels == UNIFIED], valid[labels == UNIFIED], strict=True):
            assert row[ok].abs().unique().numel() == 1


@pytest.mark.parametrize("unified", ["frozen", "shared_magnitude"])
def test_masked_finetuning_with_adamw_keeps_the_structure_exact(
    plugins: Plugins, unified: str
) -> None:
    recipe = make_recipe(
        plugins, optimizer="{name: adamw, lr: 0.01, weight_decay: 0.5}", finish=6, unified=unified
    )
    model = small_net()
    session = Session(model, recipe, steps_per_epoch=10, plugins=plugins)
    optimizer = train(model, session, 6)
    admm = session.modifiers[0]
    assert admm.finished and session.penalty() == 0.0
    anchor = {n: a.clone() for n, a in admm.anchor.items()}
    for _ in range(15):
        train(model, session, 1, optimizer)
        check_structure(model, admm)
    for name, a in anchor.items():
        layout = layout_of(a, (2, 2))
        unified_rows = admm.labels[name] == UNIFIED
        now = to_blocks(w_after(model, name), layout)[unified_rows]
        then = to_blocks(a, layout)[unified_rows]
        if unified == "frozen":
            assert torch.equal(now, then)
        else:
            assert not torch.equal(now, then)  # the shared magnitudes trained
            moving = now.abs().amax(dim=1) > 0
            assert torch.equal(torch.sign(now[moving]), torch.sign(then[moving]))
        free = admm.labels[name] == 0
        assert not torch.equal(
            to_blocks(w_after(model, name), layout)[free], to_blocks(a, layout)[free]
        )


def test_resume_mid_admm_equals_an_uninterrupted_run(plugins: Plugins, tmp_path: Path) -> None:
    recipe = make_recipe(plugins, finish=18)
    straight = small_net()
    session = Session(straight, recipe, steps_per_epoch=10, plugins=plugins)
    train(straight, session, 24)

    first = small_net()
    session_a = Session(first, recipe, steps_per_epoch=10, plugins=plugins)
    train(first, session_a, 10)  # stop between two Z/U updates, mid-ADMM
    atomic_save({"session": session_a.state_dict(), "model": first.state_dict()}, tmp_path / "c.pt")
    del session_a, first

    state = load(tmp_path / "c.pt")
    resumed = small_net()
    resumed.load_state_dict(state["model"])
    session_b = Session(resumed, recipe, steps_per_epoch=10, plugins=plugins)
    optimizer = session_b.optimizer()
    session_b.load_state_dict(state["session"])
    assert session_b.modifiers[0].Z is not None
    train(resumed, session_b, 14, optimizer)

    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    a_state, b_state = session.modifiers[0].state_dict(), session_b.modifiers[0].state_dict()
    assert a_state["history"] == b_state["history"]
    assert all(torch.equal(a_state["labels"][n], b_state["labels"][n]) for n in a_state["labels"])


def test_report_has_exact_fractions_and_the_paper_formulas(plugins: Plugins) -> None:
    recipe = make_recipe(plugins, block="[4, 4]", finish=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8, bias=False))  # Nb = 2 x 4 = 8 blocks of n = 16
    session = Session(model, recipe, steps_per_epoch=10, plugins=plugins)
    optimizer = session.optimizer()
    x, y = torch.randn(16, 16), torch.randint(0, 8, (16,))
    for _ in range(8):

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y) + session.penalty()
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
    report = session.finalize()["modifiers"][0]
    assert report["phase"] == "finetune"
    nb, kp, ku, n = 8, 4, 2, 16
    kf = nb - kp - ku
    assert (report["pruned_blocks"], report["unified_blocks"]) == (kp, ku)
    assert report["pruned_fraction"] == report["target_pruned_fraction"] == 0.5
    assert report["unified_fraction"] == report["target_unified_fraction"] == 0.25
    assert report["pruned_of_target"] == report["unified_of_target"] == 1.0
    assert report["compression_ratio"] == nb * n / (kf * n + ku)
    assert report["storage_bits"] == 2 * nb + ku * (32 + n) + kf * n * 32
    assert report["multiplies_saved"] == kp * n + ku * (n - 1)
    assert report["residual_history"][0]["step"] == 0
    assert 0 < report["finish"]["projection_distance"] < 1


def test_recipe_smoke_on_small_data(plugins: Plugins) -> None:
    raw = yaml.safe_load((ROOT / "recipes" / "admm-unify-mnist1d.yaml").read_text())
    raw = apply_overrides(
        raw,
        ["data={name: synthetic, samples: 64, features: 40, classes: 10, batch_size: 16}"],
    )
    recipe = recipe_from_text(yaml.safe_dump(raw), registries=plugins.registries)
    model_builder = plugins.registries.models.build(recipe.config.model)
    data = plugins.registries.datasets.build(recipe.config.data).build()
    torch.manual_seed(0)
    model = model_builder.build(data.info)
    session = Session(model, recipe, steps_per_epoch=2, plugins=plugins)  # 15 epochs = 30 steps
    optimizer = session.optimizer()
    for step in range(session.clock.total_steps):
        i = step % 2
        xb, yb = data.train_x[i * 16 : (i + 1) * 16], data.train_y[i * 16 : (i + 1) * 16]

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb) + session.penalty()
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
    report = session.finalize()["modifiers"][0]
    assert report["phase"] == "finetune"
    assert report["pruned_of_target"] == report["unified_of_target"] == 1.0
    first = report["per_layer"]["features.0.weight"]  # [64, 1, 5]: 16 x 2 blocks, ragged edge
    assert (first["blocks"], first["pruned"], first["unified"]) == (32, 16, 8)
    assert len(report["per_layer"]) == 5
    assert copy.deepcopy(report)  # plain data


def test_defaults_epochs_and_target_selection(plugins: Plugins) -> None:
    recipe = recipe_from_text(
        """
name: admm-defaults
model: {name: mlp}
data: {name: synthetic}
train: {epochs: 3}
optimizer: {name: sgd, lr: 0.1}
modifiers:
  - type: admm
    block: [2, 2]
    exclude: ["2.weight"]
    update_every: 0.5ep
""",
        registries=plugins.registries,
    )
    model = small_net()
    session = Session(model, recipe, steps_per_epoch=10, plugins=plugins)
    admm = session.modifiers[0]
    assert (admm.every, admm.finish) == (5, 20)  # finish defaults to two thirds of 30 steps
    assert admm.masked_names() == {"0.weight"}
    assert admm.timeline()[-1][0] == 20
    before = model[2].weight.detach().clone()
    train(model, session, 21)
    assert admm.finished and set(session.masks) == {"0.weight"}
    assert [h["step"] for h in admm.history] == [0, 5, 10, 15]
    assert bool((model[2].weight != 0).all()) and not torch.equal(model[2].weight, before)


def test_built_in_loop_reports_accuracy_around_the_hard_projection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from compressor.host.manager import load_plugins
    from compressor.recipe.schema import recipe_from_text
    from compressor.train.loop import run

    plugins = load_plugins(autoload=False)
    recipe = recipe_from_text(
        "name: admm-loop\nmodel: {name: mlp, hidden: [16]}\n"
        "data: {name: synthetic, samples: 64, test_samples: 32, features: 8, classes: 3, batch_size: 16}\n"
        "train: {epochs: 2}\noptimizer: {name: sgd, lr: 0.1}\n"
        "modifiers:\n  - {type: admm, block: [2, 2], prune_ratio: 0.5, unify_ratio: 0.25, update_every: 2, finish_at: 4}\n",
        registries=plugins.registries,
    )
    report = run(recipe, tmp_path / "run", plugins=plugins, progress=False)
    finish = report["modifiers"][0]["finish"]
    assert finish["step"] == 4
    assert 0.0 <= finish["accuracy_before_projection"] <= 1.0
    assert 0.0 <= finish["accuracy_after_projection"] <= 1.0
