"""Quantization (METHODS.md §10): RTN on the exact k-bit grid, GPTQ's OBS sweep against the
dense reference, zeros kept after pruning, idempotence, and quant as CrAM's operator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor import Session
from compressor.contract.errors import RecipeError
from compressor.plugin_api import ConfigError
from compressor_plugins.posttrain.calibration import gemm_view
from compressor_plugins.posttrain.quant import (
    dequantize,
    expand_groups,
    gptq_layer,
    group_absmax,
    qmax,
    quantize,
)
from tests.plugins.posttrain.support import (
    bound,
    damped,
    dense_obs,
    reconstruction_error,
    weights_of,
)
from tests.plugins.posttrain.test_sparsegpt import correlated_inputs
from tests.support.cram import make_recipe, tiny_batch, tiny_model

torch.set_num_threads(1)


def assert_on_grid(matrix: torch.Tensor, bits: int, group: int | None) -> None:
    """Every group of the 2-D ``matrix`` is exactly the grid point ``q·a/qmax`` (in its dtype;
    ``±qmax`` is ``±a``) for integers ``|q| <= qmax``, ``a`` its largest ``|w|``, some code
    reaching ``±qmax``."""
    top = qmax(bits)
    rows, cols = matrix.shape
    width = group or cols
    for r in range(rows):
        for start in range(0, cols, width):
            part = matrix[r, start : start + width]
            a = part.abs().max()
            if float(a) == 0:
                continue
            q = part.double() / (float(a) / top)
            codes = q.round()
            assert bool(((q - codes).abs() < 1e-4).all())  # near integers ...
            assert int(codes.abs().max()) == top
            grid = dequantize(codes.to(torch.int8), a, bits, part.dtype)
            assert torch.equal(grid, part)  # ... and exactly the grid's points


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rtn_lies_exactly_on_the_grid_and_is_idempotent(
    bits: int, group: int | None, dtype: torch.dtype
) -> None:
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Conv1d(6, 4, 3)).to(dtype)
    operator = bound({"kind": "quant", "bits": bits, "group_size": group}, model)
    once = operator.project(weights_of(operator), None)
    twice = operator.project(once, None)
    for name, value in once.items():
        assert value.dtype == dtype
        assert torch.equal(value, twice[name])
        assert_on_grid(gemm_view(value), bits, group)
        matrix = gemm_view(value)
        absmax = expand_groups(group_absmax(matrix, group), group, matrix.shape[1])
        assert int(quantize(matrix, absmax, bits).abs().max()) == qmax(bits)


def test_rtn_is_round_to_nearest_of_scale() -> None:
    w = torch.tensor([[1.0, -0.5, 0.26, 0.0, -0.74]])
    absmax = group_absmax(w, None)
    value = dequantize(quantize(w, absmax, 3), absmax, 3, w.dtype)  # qmax 3, scale 1/3
    assert torch.equal(value, torch.tensor([[1.0, -2 / 3, 1 / 3, 0.0, -2 / 3]]))


def test_zeros_stay_zero_after_pruning() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(64, 16)
    magnitude = bound({"kind": "magnitude", "scope": "layer"}, model)
    pruned = magnitude.project(weights_of(magnitude), 0.6)
    for config in ({"kind": "quant", "bits": 4}, {"kind": "gptq", "bits": 4, "block_size": 4}):
        operator = bound(config, model, [x])
        out = operator.project(pruned, None)
        for name, value in out.items():
            assert bool((value[pruned[name] == 0] == 0).all()), config
            assert_on_grid(value.detach(), 4, None)


@pytest.mark.parametrize("group", [None, 4])
def test_gptq_matches_the_dense_obs_reference(group: int | None) -> None:
    x = correlated_inputs(64, 12).double()
    w = torch.randn(5, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    h = 2 * x.t() @ x
    bits = 3
    ours = gptq_layer(w, h, bits, group_size=group, block_size=4)
    state: dict[str, torch.Tensor] = {}

    def choose(j: int, cur: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        width = group or cur.shape[1]
        if j % width == 0:  # the group's scale and its largest entry, from current weights
            part = cur[:, j : j + width]
            state["a"], where = part.abs().max(dim=1)
            state["pin"] = where + j
            state["sign"] = torch.sign(part.gather(1, where[:, None]).squeeze(1))
        a = state["a"]
        value = dequantize(quantize(cur[:, j], a, bits), a, bits, cur.dtype)
        return torch.where(state["pin"] == j, state["sign"] * a, value)

    reference = dense_obs(w, damped(h), choose)
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-10)
    assert_on_grid(ours, bits, group)


def test_gptq_lowers_the_reconstruction_error_below_rtn() -> None:
    torch.manual_seed(1)
    model = nn.Linear(48, 32, bias=False)
    x = correlated_inputs(512, 48).float()
    for bits in (3, 4):
        gptq = bound({"kind": "gptq", "bits": bits, "block_size": 16}, model, [x])
        rtn = bound({"kind": "quant", "bits": bits}, model)
        (ours,) = gptq.project(weights_of(gptq), None).values()
        (plain,) = rtn.project(weights_of(rtn), None).values()
        w = model.weight.detach()
        assert reconstruction_error(w, ours, x) < reconstruction_error(w, plain, x)


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("group", [None, 8])
def test_gptq_is_idempotent_and_an_rtn_fixed_point(bits: int, group: int | None) -> None:
    """The sweep moves a group's largest entry before its turn; pinning it keeps the scale
    recoverable, so a second GPTQ (or an RTN) finds every weight already on its grid."""
    for seed in range(4):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
        x = correlated_inputs(50, 16, seed)
        config = {"kind": "gptq", "bits": bits, "group_size": group}
        operator = bound(config, model, [x])
        once = operator.project(weights_of(operator), None)
        twice = operator.project(once, None)
        assert all(torch.equal(once[k], twice[k]) for k in once)
        rtn = bound({"kind": "quant", "bits": bits, "group_size": group}, model)
        assert all(torch.equal(v, rtn.project(once, None)[k]) for k, v in once.items())


def test_labels_and_levels() -> None:
    model = nn.Linear(8, 4)
    rtn = bound({"kind": "quant", "bits": 4, "group_size": 32}, model)
    gptq = bound({"kind": "gptq", "bits": 8}, model, [torch.randn(4, 8)])
    assert rtn.label(None) == "rtn int4 g32" and gptq.label(0.0) == "gptq int8"
    assert rtn.levels([]) == [0.0] == gptq.levels([])
    with pytest.raises(ConfigError, match="pattern has sparsity 0"):
        rtn.levels([0.5])
    with pytest.raises(ValueError, match="prunes nothing"):
        rtn.project(weights_of(rtn), 0.5)


def test_quant_as_cram_operator_validates_and_trains() -> None:
    """CrAM perturbs, then quantizes: pass 2 runs at weights on the 4-bit grid, every draw is
    quant's fixed level 0, and the dense weights train on."""
    recipe = make_recipe("{name: cram, rho: 0.05, operator: {kind: quant, bits: 4}}")
    model = tiny_model()
    session = Session(model, recipe, steps_per_epoch=3)
    optimizer = session.optimizer()
    wrapper = optimizer.base
    names = [t.name for t in wrapper.choices[0][0].targets]  # type: ignore[attr-defined]
    params = dict(model.named_parameters())
    start = {n: params[n].detach().clone() for n in names}
    passes: list[dict[str, torch.Tensor]] = []
    batch: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        passes.append({n: params[n].detach().clone() for n in names})
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        return loss

    for i in range(3):
        batch[:] = tiny_batch(i)
        passes.clear()
        loss = optimizer.step(closure)
        session.step_end(loss.detach())
        assert len(passes) == 2
        for n in names:
            assert_on_grid(passes[1][n], 4, None)  # the compressed point
        assert wrapper.last_target == (0, 0.0)  # type: ignore[attr-defined]
    assert all(not torch.equal(start[n], params[n]) for n in names)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_quant_in_cram_with_sparsities_is_refused() -> None:
    bad = make_recipe("{name: cram, sparsities: [0.5], operator: {kind: quant, bits: 4}}")
    with pytest.raises(RecipeError, match="pattern has sparsity 0, but 0.5"):
        Session(tiny_model(), bad, steps_per_epoch=1).optimizer()
