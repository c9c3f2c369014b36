"""Amortised two-pass steps (``every: k``, issue 15): SAM's LookSAM rule and its CrAM analogue.

``every: 1`` is pinned bitwise against a frozen copy of the two-pass step as it was before
``every`` existed; the reuse rule against hand-made gradients in float64; the pass count per
step; the draw stream; and resume in the middle of a cycle through the built-in loop.
"""

from __future__ import annotations

import copy
import json
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compressor import Session
from compressor.contract.errors import RecipeError
from compressor.host.manager import Plugins
from compressor.kit.bn import batchnorm_layers, freeze_bn_stats
from compressor.kit.files import atomic_save, load_checkpoint
from compressor.kit.params import params_with_grad
from compressor.train.loop import run
from tests.conftest import TINY_RECIPE
from tests.conftest import make_recipe as make_run_recipe
from tests.support.cram import make_closure, make_recipe, tiny_batch, tiny_model

MOMENTUM = "{name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}"
MULTI = "sparsities: [0.5, 0.7, 0.9]"


# -- every: 1 is the two-pass step as it was --------------------------------------------------


def _frozen_cram_combine(self: Any, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """CrAM.combine before ``every`` existed (verbatim)."""
    if self.config.sparse_grad:
        for name, mask in self.masks.items():
            grad = self._mask_params[name].grad
            if grad is not None:
                grad.mul_(mask)
    if self.config.plus:
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)


def _frozen_step(self: Any, closure: Callable[[], Any]) -> Any:
    """TwoPassWrapper.step before ``every`` existed (verbatim but for the combine call)."""
    with torch.enable_grad():
        loss = closure()
    params = params_with_grad(self.base)
    if not params:
        return loss
    grads = [p.grad for p in params]
    restore = params + self.extra_restored(params)
    with torch.no_grad():
        saved = [p.detach().clone() for p in restore]
        self.perturb(params, grads)
    for p in params:
        p.grad = None
    if self._bn is None:
        self._bn = batchnorm_layers(self.context.model)
    try:
        with freeze_bn_stats(self.context.model, layers=self._bn), torch.enable_grad():
            closure()
    finally:
        with torch.no_grad():
            torch._foreach_copy_(restore, saved)
    with torch.no_grad():
        if self.config.name == "cram":
            _frozen_cram_combine(self, params, grads)
    self.base.step()
    return loss


def _train(
    wrapper: str, steps: int, *, frozen: bool = False, extra: str = "lr_schedule: {kind: cosine}\n"
) -> tuple[nn.Module, Session, list[Any]]:
    """``steps`` steps on tiny batches; returns the model, the session and CrAM's draws."""
    model = tiny_model()
    session = Session(model, make_recipe(wrapper, MOMENTUM, extra), steps_per_epoch=steps)
    optimizer = session.optimizer()
    if frozen:
        optimizer.base.step = types.MethodType(_frozen_step, optimizer.base)  # type: ignore[method-assign]
    draws = []
    for i in range(steps):
        x, y = tiny_batch(i)
        loss = optimizer.step(make_closure(model, optimizer, x, y))
        session.step_end(loss.detach())
        draws.append(getattr(optimizer.base, "last_target", None))
    return model, session, draws


WRAPPERS = [
    "{name: sam, rho: 0.3}",
    "{name: sam, rho: 0.3, adaptive: true}",
    f"{{name: cram, rho: 0.1, {MULTI}}}",
    f"{{name: cram, rho: 0.1, plus: false, {MULTI}}}",
    f"{{name: cram, rho: 0.1, sparse_grad: false, {MULTI}}}",
]


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("every", ["", ", every: 1", ", every: 1, alpha: 0.2"])
def test_every_1_is_bitwise_the_two_pass_step_as_it_was(wrapper: str, every: str) -> None:
    """Weights, BN buffers, momentum and draws after 6 steps equal the frozen step's exactly."""
    ours, session, draws = _train(wrapper[:-1] + every + "}", 6)
    frozen, frozen_session, frozen_draws = _train(wrapper, 6, frozen=True)
    for key, value in frozen.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    state, expected = session.state_dict()["optimizer"], frozen_session.state_dict()["optimizer"]
    assert set(state) == {"state", "param_groups"}  # every: 1 saves nothing more
    for index, buffers in expected["state"].items():
        assert torch.equal(state["state"][index]["momentum_buffer"], buffers["momentum_buffer"])
    assert draws == frozen_draws
    assert torch.equal(session.generator.get_state(), frozen_session.generator.get_state())
    wrapper_object = session.optimizer_.base  # type: ignore[union-attr]
    assert (wrapper_object.steps, wrapper_object.second_passes) == (6, 6)


def test_the_frozen_copy_notices_a_different_step() -> None:
    """The comparison above can fail: every: 2 differs from the frozen step."""
    ours, _, _ = _train("{name: sam, rho: 0.3, every: 2}", 6)
    frozen, _, _ = _train("{name: sam, rho: 0.3}", 6, frozen=True)
    assert any(not torch.equal(ours.state_dict()[k], v) for k, v in frozen.state_dict().items())


# -- the reuse rule on hand-made gradients ----------------------------------------------------

# A model of three numbers: weight [[2.0, 0.1]] and bias [0.0]. The closure ignores the model
# and hands out these gradients in order (pass 1, pass 2 on a full step; pass 1 only between).
G0 = ([[3.0, 0.0]], [4.0])  # pass 1, step 0: ||g0|| = 5
H0 = ([[1.0, 2.0]], [3.0])  # pass 2, step 0
G1 = ([[1.0, 1.0]], [1.0])  # pass 1, step 1 (reusing): ||g1|| = sqrt(3)
G2 = ([[0.5, -1.0]], [2.0])  # pass 1, step 2 (full again)
H2 = ([[-1.0, 0.5]], [1.0])  # pass 2, step 2
ALPHA = 0.5


def _flat(grads: tuple[list[list[float]], list[float]]) -> torch.Tensor:
    return torch.tensor([*grads[0][0], *grads[1]], dtype=torch.float64)


def _hand_model() -> nn.Module:
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.1]], dtype=torch.float64))
        model.bias.zero_()
    return model


def _run_hand(wrapper: str) -> tuple[list[torch.Tensor], Any]:
    """Three steps (full, reusing, full) with every: 2; the flat weights after each."""
    model = _hand_model()
    session = Session(model, make_recipe(wrapper), steps_per_epoch=3)
    optimizer = session.optimizer()
    queue = [G0, H0, G1, G2, H2]

    def closure() -> torch.Tensor:
        weight, bias = queue.pop(0)
        model.weight.grad = torch.tensor(weight, dtype=torch.float64)
        model.bias.grad = torch.tensor(bias, dtype=torch.float64)
        return torch.zeros((), dtype=torch.float64)

    after = []
    for _ in range(3):
        optimizer.step(closure)
        session.step_end()
        after.append(torch.cat([model.weight.detach().flatten(), model.bias.detach()]))
    assert queue == []  # exactly five passes: 2 + 1 + 2
    return after, optimizer.base


def _split(h: torch.Tensor, g: torch.Tensor) -> tuple[float, torch.Tensor]:
    c = float(h @ g) / float(g @ g)
    return c, h - c * g


def test_sam_reuse_is_lookSAM_rule_on_hand_made_gradients() -> None:
    """Full: w -= h. Reusing: w -= g + alpha·(||g||/||g_v||)·g_v, g_v = h - (<h,g>/||g||²)·g."""
    after, wrapper = _run_hand(f"{{name: sam, rho: 0.01, every: 2, alpha: {ALPHA}}}")
    w0 = torch.tensor([2.0, 0.1, 0.0], dtype=torch.float64)
    g0, h0, g1 = _flat(G0), _flat(H0), _flat(G1)
    c0, g_v = _split(h0, g0)
    assert c0 == pytest.approx(15 / 25)  # <h0, g0> = 3 + 12, ||g0||² = 25
    assert torch.allclose(g_v, torch.tensor([-0.8, 2.0, 0.6], dtype=torch.float64))  # ||g_v|| = √5
    w1 = w0 - h0
    w2 = w1 - (g1 + ALPHA * math.sqrt(3) / math.sqrt(5) * g_v)
    w3 = w2 - _flat(H2)
    for got, expected in zip(after, [w1, w2, w3], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    assert (wrapper.steps, wrapper.second_passes) == (3, 2)


@pytest.mark.parametrize("plus", [True, False])
def test_cram_reuse_rule_on_hand_made_gradients(plus: bool) -> None:
    """h = M ⊙ g_c (M keeps weight[0], the larger of |w + rho·g|; the bias is not compressed).
    Reusing: ĥ = c·g + alpha·(||g||/||g_v||)·g_v with the stored c; CrAM+ steps with g + ĥ."""
    after, _ = _run_hand(
        f"{{name: cram, rho: 0.01, plus: {str(plus).lower()}, sparsities: [0.5],"
        f" every: 2, alpha: {ALPHA}}}"
    )
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    w0 = torch.tensor([2.0, 0.1, 0.0], dtype=torch.float64)
    g0, g1, g2 = _flat(G0), _flat(G1), _flat(G2)
    h0, h2 = mask * _flat(H0), mask * _flat(H2)
    c0, g_v = _split(h0, g0)
    assert c0 == pytest.approx(0.6)  # <M ⊙ h0, g0> = 3 + 12 over 25
    assert torch.allclose(g_v, torch.tensor([-0.8, 0.0, 0.6], dtype=torch.float64))  # norm 1
    h1 = c0 * g1 + ALPHA * math.sqrt(3) / 1.0 * g_v
    dense = 1.0 if plus else 0.0
    w1 = w0 - (h0 + dense * g0)
    w2 = w1 - (h1 + dense * g1)
    # step 2's mask is recomputed from w2 + rho·g2: weight[0] is still the larger
    assert abs(w2[0] + 0.01 * g2[0]) > abs(w2[1] + 0.01 * g2[1])
    w3 = w2 - (h2 + dense * g2)
    for got, expected in zip(after, [w1, w2, w3], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


def test_a_zero_orthogonal_part_adds_no_correction() -> None:
    """h parallel to g gives g_v = 0: the reusing step is β·g (no 0/0)."""
    model = _hand_model()
    session = Session(model, make_recipe("{name: sam, every: 2}"), steps_per_epoch=2)
    optimizer = session.optimizer()
    queue = [G0, ([[6.0, 0.0]], [8.0]), G1]

    def closure() -> torch.Tensor:
        weight, bias = queue.pop(0)
        model.weight.grad = torch.tensor(weight, dtype=torch.float64)
        model.bias.grad = torch.tensor(bias, dtype=torch.float64)
        return torch.zeros((), dtype=torch.float64)

    optimizer.step(closure)
    session.step_end()
    before = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    optimizer.step(closure)
    after = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    torch.testing.assert_close(after, before - _flat(G1), rtol=0, atol=1e-15)


# -- passes, draws, configs ------------------------------------------------------------------


def _count_passes(model: nn.Module) -> list[int]:
    """Forward passes, appended per call; the caller groups them by step."""
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(
    "wrapper", ["{name: sam, every: 5}", f"{{name: cram, rho: 0.1, {MULTI}, every: 5}}"]
)
def test_every_5_runs_two_passes_on_full_steps_and_one_in_between(wrapper: str) -> None:
    model = tiny_model()
    forwards = _count_passes(model)
    backwards: list[int] = []
    next(model.parameters()).register_hook(lambda grad: backwards.append(1))
    session = Session(model, make_recipe(wrapper, MOMENTUM), steps_per_epoch=10)
    optimizer = session.optimizer()
    per_step = []
    for i in range(10):
        before = (len(forwards), len(backwards))
        loss = optimizer.step(make_closure(model, optimizer, *tiny_batch(i)))
        session.step_end(loss.detach())
        per_step.append((len(forwards) - before[0], len(backwards) - before[1]))
    assert per_step == [(2, 2), (1, 1), (1, 1), (1, 1), (1, 1)] * 2
    assert (len(forwards), len(backwards)) == (12, 12)  # 2 full steps x 2 + 8 x 1
    report = session.finalize()["wrapper"]
    assert report["every"] == 5 and report["alpha"] == 0.7
    assert (report["steps"], report["second_passes"]) == (10, 2)
    assert "every=5, alpha=0.7" in report["description"]


def test_reusing_steps_draw_as_full_steps_do_and_compute_no_mask() -> None:
    """The generator advances as with every: 1; full steps draw every: 1's targets there."""
    wrapper = "{name: cram, rho: 0.1, sparsities: [0.5, 0.6, 0.7, 0.8, 0.9]EVERY}"
    _, full, full_draws = _train(wrapper.replace("EVERY", ""), 10)
    model = tiny_model()
    recipe = make_recipe(
        wrapper.replace("EVERY", ", every: 5"), MOMENTUM, "lr_schedule: {kind: cosine}\n"
    )
    session = Session(model, recipe, steps_per_epoch=10)
    optimizer = session.optimizer()
    operator = optimizer.base.choices[0][0]  # type: ignore[attr-defined]
    calls: list[int] = []
    masks = operator.masks
    operator.masks = lambda *a, **k: (calls.append(session.step), masks(*a, **k))[1]
    draws = []
    for i in range(10):
        loss = optimizer.step(make_closure(model, optimizer, *tiny_batch(i)))
        session.step_end(loss.detach())
        draws.append(optimizer.base.last_target)  # type: ignore[attr-defined]
    assert calls == [0, 5]  # masks only on the steps that run pass 2
    assert [draws[0], draws[5]] == [full_draws[0], full_draws[5]]
    assert len(set(full_draws)) > 1  # the draws differ from step to step, so this can fail
    assert draws[1:5] == [draws[0]] * 4  # last_target: the last computed mask's
    assert torch.equal(session.generator.get_state(), full.generator.get_state())


@pytest.mark.parametrize(
    ("wrapper", "message"),
    [
        ("{name: sam, every: 0}", "greater than or equal to 1"),
        ("{name: sam, every: 2, alpha: -0.1}", "greater than or equal to 0"),
        ("{name: cram, sparsities: [0.5], every: 0}", "greater than or equal to 1"),
        ("{name: cram, sparsities: [0.5], every: 2, mask_every: 3}", "cannot be combined"),
    ],
)
def test_bad_every_settings_are_recipe_errors(wrapper: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        make_recipe(wrapper)


def test_state_dict_holds_what_is_reused_by_parameter_index() -> None:
    """g_v as its norm and unit direction (one tensor per parameter, by index) and c."""
    _, session, _ = _train("{name: cram, rho: 0.1, sparsities: [0.7], every: 5}", 7)
    state = session.state_dict()["optimizer"]
    assert set(state) == {"state", "param_groups", "two_pass"}
    saved = state["two_pass"]
    assert (saved["every"], saved["steps"], saved["second_passes"]) == (5, 7, 2)
    assert saved["parallel"].dim() == 0 and float(saved["norm"]) > 0
    shapes = [p.shape for p in session.model.parameters()]
    assert {i: v.shape for i, v in saved["unit"].items()} == dict(enumerate(shapes))
    total = sum(float((v.double() ** 2).sum()) for v in saved["unit"].values())
    assert total == pytest.approx(1.0, rel=1e-6)


# -- resume in the middle of a cycle, through the built-in loop ------------------------------


def _loop_recipe(wrapper: str, max_steps: int, plugins: Plugins) -> Any:
    """TINY_RECIPE for 3 epochs of 4 steps: every: 5 runs pass 2 at steps 0, 5 and 10."""
    text = TINY_RECIPE.replace(
        "train: {epochs: 2, seed: 0,", f"train: {{epochs: 3, seed: 0, max_steps: {max_steps},"
    )
    text += f"lr_schedule: {{kind: cosine}}\nwrapper: {wrapper}\n"
    return make_run_recipe(text, plugins)


@pytest.mark.parametrize(
    "wrapper", ["{name: sam, every: 5}", "{name: cram, rho: 0.1, sparsities: [0.5, 0.9], every: 5}"]
)
def test_resume_mid_cycle_equals_an_uninterrupted_run(
    wrapper: str, plugins: Plugins, tmp_path: Path
) -> None:
    """Stopped after step 7 (two steps into a cycle) and resumed: bitwise the straight run."""
    run(_loop_recipe(wrapper, 12, plugins), tmp_path / "straight", plugins=plugins, progress=False)
    run(_loop_recipe(wrapper, 7, plugins), tmp_path / "split", plugins=plugins, progress=False)
    cut = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert cut["session"]["step"] == 7 and cut["session"]["optimizer"]["two_pass"]["unit"]
    dropped = copy.deepcopy(cut)  # the same checkpoint without the reused state
    del dropped["session"]["optimizer"]["two_pass"]
    (tmp_path / "dropped").mkdir()
    atomic_save(dropped, tmp_path / "dropped" / "checkpoint.pt")
    report = run(
        _loop_recipe(wrapper, 12, plugins),
        tmp_path / "split",
        plugins=plugins,
        resume=True,
        progress=False,
    )
    run(
        _loop_recipe(wrapper, 12, plugins),
        tmp_path / "dropped",
        plugins=plugins,
        resume=True,
        progress=False,
    )
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key, value in straight["model"].items():
        assert torch.equal(split["model"][key], value), key
    a, b = straight["session"]["optimizer"], split["session"]["optimizer"]
    for index, buffers in a["state"].items():
        assert torch.equal(b["state"][index]["momentum_buffer"], buffers["momentum_buffer"])
    for key in ("parallel", "norm"):
        assert torch.equal(a["two_pass"][key], b["two_pass"][key])
    for index, value in a["two_pass"]["unit"].items():
        assert torch.equal(b["two_pass"]["unit"][index], value)
    assert torch.equal(straight["session"]["generator"], split["session"]["generator"])
    assert report["wrapper"]["steps"] == 12 and report["wrapper"]["second_passes"] == 3
    # without the reused state the resumed run runs pass 2 at step 7 and ends elsewhere
    other = load_checkpoint(tmp_path / "dropped" / "checkpoint.pt")
    assert any(not torch.equal(other["model"][k], v) for k, v in straight["model"].items())


def test_two_ranks_stay_alike_and_equal_one_process(tmp_path: Path) -> None:
    """Under torchrun (2 ranks x 16) CrAM+ every: 3 ends with the same weights on both ranks,
    and those of one process reading the global batch of 32 (no BatchNorm in this model)."""
    from tests.core.train.test_distributed import CRAM_PLUS, STEPS, launch, rank_states, write

    body = CRAM_PLUS + "  every: 3\n"
    launch(write(tmp_path, "two", body, 16), tmp_path / "two", ranks=2, last_step=STEPS)
    first, second = rank_states(tmp_path / "two")
    for name, tensor in first["weights"].items():
        assert torch.equal(tensor, second["weights"][name]), name
    launch(write(tmp_path, "one", body, 32), tmp_path / "one", ranks=1)
    one, two = torch.load(tmp_path / "one" / "model.pt"), torch.load(tmp_path / "two" / "model.pt")
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=1e-5, msg=name)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["wrapper"]["second_passes"] == (STEPS + 2) // 3  # steps 0, 3, 6, ...
