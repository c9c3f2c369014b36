"""CrAM / CrAM+ wrapper: METHODS.md §5, each rule pinned with independent arithmetic."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor import Session
from compressor.contract.errors import RecipeError
from tests.support import ROOT
from tests.support.cram import (
    grads_at,
    make_closure,
    make_recipe,
    plugins_with_fixed_operators,
    tiny_batch,
    tiny_model,
    train,
    with_params,
)

TARGETS = ("0.weight", "3.weight")  # the Linear weights of tiny_model()


def _topk_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude masks over TARGETS, computed without the plugin's code."""
    flat = torch.cat([weights[n].abs().flatten() for n in TARGETS])
    keep = round((1 - sparsity) * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.topk(flat, keep).indices] = True
    out, offset = {}, 0
    for n in TARGETS:
        out[n] = mask[offset : offset + weights[n].numel()].view_as(weights[n])
        offset += weights[n].numel()
    return out


def _expected_step(
    model: torch.nn.Module, rho: float, sparsity: float, plus: bool, sparse_grad: bool
) -> dict[str, torch.Tensor]:
    x, y = tiny_batch()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = grads_at(model, x, y)
    perturbed = {n: w[n] + rho * g[n] for n in w}
    masks = _topk_masks(perturbed, sparsity)
    compressed = {n: perturbed[n] * masks[n] if n in masks else perturbed[n] for n in w}
    g_c = grads_at(with_params(model, compressed), x, y)
    if sparse_grad:
        g_c = {n: g_c[n] * masks[n] if n in masks else g_c[n] for n in w}
    return {n: w[n] - (g_c[n] + g[n] if plus else g_c[n]) for n in w}


@pytest.mark.parametrize(
    ("plus", "sparse_grad"), [(True, True), (False, False), (False, True), (True, False)]
)
def test_step_matches_the_formula(plus: bool, sparse_grad: bool) -> None:
    """lr=1, no momentum/wd: CrAM+ w - (M⊙g_c + g); CrAM w - g_c (M⊙g_c with sparse_grad)."""
    rho, sparsity = 0.5, 0.7
    model = tiny_model()
    expected = _expected_step(model, rho, sparsity, plus, sparse_grad)
    wrapper = (
        f"{{name: cram, rho: {rho}, sparsities: [{sparsity}], "
        f"plus: {str(plus).lower()}, sparse_grad: {str(sparse_grad).lower()}}}"
    )
    session = Session(model, make_recipe(wrapper), steps_per_epoch=1)
    optimizer = session.optimizer()
    optimizer.step(make_closure(model, optimizer, *tiny_batch()))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)


def _count_passes(model: torch.nn.Module) -> dict[str, int]:
    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    first = next(model.parameters())
    first.register_hook(lambda grad: counts.__setitem__("backward", counts["backward"] + 1))
    return counts


@pytest.mark.parametrize(
    ("wrapper", "passes"),
    [("{name: cram, sparsities: [0.5]}", 2), ("{name: cram, plus: false, sparsities: [0.5]}", 2)],
)
def test_two_forward_and_two_backward_passes_per_step(wrapper: str, passes: int) -> None:
    model = tiny_model()
    counts = _count_passes(model)
    session = Session(model, make_recipe(wrapper), steps_per_epoch=1)
    optimizer = session.optimizer()
    optimizer.step(make_closure(model, optimizer, *tiny_batch()))
    assert counts == {"forward": passes, "backward": passes}


def test_second_pass_leaves_bn_running_statistics_alone() -> None:
    model = tiny_model()
    x, y = tiny_batch()
    reference = copy.deepcopy(model)
    reference(x)  # pass 1 only
    session = Session(model, make_recipe("{name: cram, sparsities: [0.9]}"), steps_per_epoch=1)
    optimizer = session.optimizer()
    optimizer.step(make_closure(model, optimizer, x, y))
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(model.state_dict()[key], reference.state_dict()[key]), key


def test_mask_comes_from_the_perturbed_weights_not_the_dense_ones() -> None:
    rho, sparsity = 2.0, 0.6
    model = tiny_model()
    x, y = tiny_batch()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = grads_at(model, x, y)
    from_perturbed = _topk_masks({n: w[n] + rho * g[n] for n in w}, sparsity)
    from_dense = _topk_masks(w, sparsity)
    assert any(not torch.equal(from_perturbed[n], from_dense[n]) for n in TARGETS)

    recipe = make_recipe(f"{{name: cram, rho: {rho}, sparsities: [{sparsity}]}}")
    session = Session(model, recipe, steps_per_epoch=1)
    optimizer = session.optimizer()
    optimizer.step(make_closure(model, optimizer, x, y))
    for name in TARGETS:
        assert torch.equal(optimizer.base.masks[name], from_perturbed[name]), name
        assert optimizer.base.masks[name].dtype == torch.bool


def test_masks_change_between_steps_and_the_model_stays_dense() -> None:
    seen: list[dict[str, torch.Tensor]] = []
    model = tiny_model()
    recipe = make_recipe(
        "{name: cram, rho: 0.1, sparsities: [0.9]}", optimizer="{name: sgd, lr: 0.2}"
    )
    train(model, recipe, 12, on_step=lambda s, o: seen.append(dict(o.base.masks)))
    changed = [
        any(not torch.equal(a[n], b[n]) for n in TARGETS)
        for a, b in zip(seen, seen[1:], strict=False)
    ]
    assert any(changed)
    for name, p in model.named_parameters():
        assert bool((p != 0).all()), f"{name} has exact zeros"


def test_mask_every_reuses_a_mask_for_k_steps() -> None:
    seen: list[dict[str, torch.Tensor]] = []
    draws: list[tuple[int, float] | None] = []

    def record(session: Session, optimizer: torch.optim.Optimizer) -> None:
        seen.append(dict(optimizer.base.masks))  # type: ignore[attr-defined]
        draws.append(optimizer.base.last_target)  # type: ignore[attr-defined]

    recipe = make_recipe(
        "{name: cram, rho: 0.1, sparsities: [0.5, 0.9], mask_every: 3}",
        optimizer="{name: sgd, lr: 0.2}",
    )
    train(tiny_model(), recipe, 9, on_step=record)
    same = [
        all(torch.equal(a[n], b[n]) for n in TARGETS) for a, b in zip(seen, seen[1:], strict=False)
    ]
    assert same[0] and same[1] and same[3] and same[4] and same[6] and same[7]
    assert not all(same)
    assert draws[0] == draws[1] == draws[2] and draws[3] == draws[4] == draws[5]


DRAW_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import torch
from tests.support.cram import make_recipe, tiny_model, train
draws = []
recipe = make_recipe("{{name: cram, sparsities: [0.5, 0.7, 0.8, 0.9]}}")
train(tiny_model(), recipe, 16, on_step=lambda s, o: draws.append(o.base.last_target[1]))
print(json.dumps(draws))
"""


def test_same_seed_draws_the_same_sparsities_in_separate_processes() -> None:
    """This process and a fresh interpreter draw the same sequence (one spawn keeps it fast)."""
    script = DRAW_SCRIPT.format(root=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    draws: list[float] = []
    recipe = make_recipe("{name: cram, sparsities: [0.5, 0.7, 0.8, 0.9]}")
    train(tiny_model(), recipe, 16, on_step=lambda s, o: draws.append(o.base.last_target[1]))
    assert json.loads(proc.stdout) == draws
    assert len(draws) == 16 and len(set(draws)) > 1


def test_fixed_pattern_operators_are_drawn_with_equal_probability(tmp_path: Path) -> None:
    """N:M CrAM: one of several fixed-sparsity operators per step, no sparsities needed."""
    plugins = plugins_with_fixed_operators(tmp_path)
    recipe = make_recipe(
        "{name: cram, operators: [{kind: half}, {kind: quarter}]}", plugins=plugins
    )
    model = tiny_model()
    session = Session(model, recipe, steps_per_epoch=1, plugins=plugins)
    wrapper = session.optimizer().base
    draws = [wrapper.draw() for _ in range(400)]
    assert {d for d in draws} == {(0, 0.5), (1, 0.25)}
    assert 160 < sum(1 for d in draws if d[0] == 0) < 240

    train(model, recipe, 4, plugins=plugins)
    assert all(bool((p != 0).all()) for p in model.parameters())


def test_fixed_pattern_operator_step_keeps_its_pattern_in_pass_two(tmp_path: Path) -> None:
    plugins = plugins_with_fixed_operators(tmp_path)
    recipe = make_recipe("{name: cram, operator: {kind: half}}", plugins=plugins)
    seen: list[dict[str, torch.Tensor]] = []
    train(tiny_model(), recipe, 2, plugins=plugins, on_step=lambda s, o: seen.append(o.base.masks))
    for name in TARGETS:
        assert float(seen[-1][name].float().mean()) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("wrapper", "message"),
    [
        ("{name: cram}", "needs a target sparsity"),
        ("{name: cram, sparsities: [1.0]}", "sparsity must be in"),
        ("{name: cram, rho: -1, sparsities: [0.5]}", "greater than 0"),
        (
            "{name: cram, sparsities: [0.5], operator: {kind: magnitude}, "
            "operators: [{kind: magnitude}]}",
            "not both",
        ),
    ],
)
def test_bad_configs_fail_before_training(wrapper: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe = make_recipe(wrapper)
        Session(tiny_model(), recipe, steps_per_epoch=1).optimizer()


def test_persistent_gmp_masks_stay_zero_under_cram() -> None:
    recipe = make_recipe(
        "{name: cram, rho: 0.1, sparsities: [0.5]}",
        optimizer="{name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-3}",
        extra="""
        modifiers:
          - type: oneshot
            sparsity: 0.8
            operator: {kind: magnitude, scope: layer}
        """,
    )
    model = tiny_model()
    session = train(model, recipe, 5)
    for name in TARGETS:
        mask = session.masks.get(name)
        assert mask is not None
        assert bool((dict(model.named_parameters())[name][~mask] == 0).all())


def _checkpoint_recipe() -> object:
    return make_recipe(
        "{name: cram, rho: 0.1, sparsities: [0.5, 0.7, 0.9]}",
        optimizer="{name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}",
        extra="lr_schedule: {kind: cosine}\n",
    )


def _run(
    model: torch.nn.Module, session: Session, optimizer: torch.optim.Optimizer, steps: range
) -> None:
    for i in steps:
        x, y = tiny_batch(i)
        loss = optimizer.step(make_closure(model, optimizer, x, y))
        session.step_end(loss.detach())


def test_checkpoint_holds_only_base_state_and_resume_is_exact() -> None:
    total, split = 8, 3
    recipe = _checkpoint_recipe()
    straight = tiny_model()
    session = Session(straight, recipe, steps_per_epoch=total)  # type: ignore[arg-type]
    _run(straight, session, session.optimizer(), range(total))

    first = tiny_model()
    session_a = Session(first, recipe, steps_per_epoch=total)  # type: ignore[arg-type]
    optimizer_a = session_a.optimizer()
    _run(first, session_a, optimizer_a, range(split))
    state = copy.deepcopy(session_a.state_dict())
    weights = copy.deepcopy(first.state_dict())
    assert set(state["optimizer"]) == {"state", "param_groups"}
    assert all(set(s) == {"momentum_buffer"} for s in state["optimizer"]["state"].values())

    resumed = tiny_model(seed=123)
    resumed.load_state_dict(weights)
    session_b = Session(resumed, recipe, steps_per_epoch=total)  # type: ignore[arg-type]
    optimizer_b = session_b.optimizer()
    session_b.load_state_dict(state)
    _run(resumed, session_b, optimizer_b, range(split, total))

    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
