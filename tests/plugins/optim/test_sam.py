"""SAM wrapper: the closure protocol of METHODS.md §4, pinned with independent arithmetic."""

from __future__ import annotations

import copy

import pytest
import torch

from compressor import Session
from tests.support.cram import (
    grads_at,
    loss_of,
    make_closure,
    make_recipe,
    tiny_batch,
    tiny_model,
    train,
    with_params,
)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_matches_the_formula(adaptive: bool) -> None:
    """lr=1, no momentum, no wd: w_new = w - grad(w + e), e = rho·s·g/||s·g||·s (s=|w| or 1)."""
    rho = 0.3
    model = tiny_model()
    x, y = tiny_batch()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = grads_at(model, x, y)
    scale = {n: (w[n].abs() if adaptive else torch.ones_like(w[n])) for n in w}
    norm = torch.sqrt(sum(((scale[n] * g[n]) ** 2).sum() for n in w))
    e = {n: rho * scale[n] ** 2 * g[n] / (norm + 1e-12) for n in w}
    g_sam = grads_at(with_params(model, {n: w[n] + e[n] for n in w}), x, y)
    expected = {n: w[n] - g_sam[n] for n in w}

    recipe = make_recipe(f"{{name: sam, rho: {rho}, adaptive: {str(adaptive).lower()}}}")
    session = Session(model, recipe, steps_per_epoch=1)
    optimizer = session.optimizer()
    optimizer.step(make_closure(model, optimizer, x, y))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)


def _count_passes(model: torch.nn.Module) -> dict[str, int]:
    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    first = next(model.parameters())
    first.register_hook(lambda grad: counts.__setitem__("backward", counts["backward"] + 1))
    return counts


@pytest.mark.parametrize(("wrapper", "passes"), [("{name: sam}", 2), (None, 1)])
def test_passes_per_step(wrapper: str | None, passes: int) -> None:
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
    session = Session(model, make_recipe("{name: sam, rho: 0.5}"), steps_per_epoch=1)
    optimizer = session.optimizer()
    optimizer.step(make_closure(model, optimizer, x, y))
    for key, value in reference.state_dict().items():
        if "running" in key or "num_batches" in key:
            assert torch.equal(model.state_dict()[key], value), key


def test_returns_the_unperturbed_loss_and_restores_weights_before_the_base_step() -> None:
    model = tiny_model()
    x, y = tiny_batch()
    expected_loss = float(loss_of(copy.deepcopy(model), x, y).detach())
    recipe = make_recipe("{name: sam, rho: 0.5}", optimizer="{name: sgd, lr: 1.0e-12}")
    session = Session(model, recipe, steps_per_epoch=1)
    optimizer = session.optimizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = optimizer.step(make_closure(model, optimizer, x, y))
    assert float(loss.detach()) == pytest.approx(expected_loss)
    for name, p in model.named_parameters():  # a 1e-12 step: back at w, not at w + e
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=1e-9)


def test_state_dict_is_the_base_optimizers_and_lr_schedules_reach_it() -> None:
    recipe = make_recipe(
        "{name: sam}",
        optimizer="{name: sgd, lr: 0.1, momentum: 0.9}",
        extra="lr_schedule: {kind: cosine}\n",
    )
    session = train(tiny_model(), recipe, 3)
    optimizer = session.optimizer_
    assert optimizer is not None
    state = optimizer.state_dict()
    assert set(state) == {"state", "param_groups"}
    assert all(set(s) == {"momentum_buffer"} for s in state["state"].values())
    assert optimizer.param_groups[0]["lr"] < 0.1


def test_needs_a_closure() -> None:
    model = tiny_model()
    session = Session(model, make_recipe("{name: sam}"), steps_per_epoch=1)
    with pytest.raises(TypeError, match="closure"):
        session.optimizer().step()


def test_rho_must_be_positive() -> None:
    from compressor.contract.errors import RecipeError

    with pytest.raises(RecipeError, match="rho"):
        make_recipe("{name: sam, rho: 0}")
