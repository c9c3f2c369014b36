"""SparseGPT (METHODS.md §10): the OBS solver against a plain dense reference, its error
against magnitude's, the N:M pattern, exact zeros and idempotence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.plugin_api import nm_violations
from compressor_plugins.posttrain.sparsegpt import sparsegpt_layer
from tests.plugins.posttrain.support import (
    bound,
    damped,
    reconstruction_error,
    round_keep,
    sparsegpt_reference,
    weights_of,
)

torch.set_num_threads(1)


def correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    """``[tokens, features]`` with correlated features and uneven scales (as activations are)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=g) / features**0.5
    scales = torch.rand(features, generator=g) * 2 + 0.1
    return (torch.randn(tokens, features, generator=g) @ mix + 0.3) * scales


def layer(rows: int, cols: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(cols, rows, bias=False).to(dtype)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("block", [4, 16])
def test_matches_the_dense_obs_reference(sparsity: float, block: int) -> None:
    x = correlated_inputs(64, 12).double()
    w = torch.randn(6, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = 2 * x.t() @ x
    ours, keep = sparsegpt_layer(w, h, sparsity, block_size=block)
    reference = sparsegpt_reference(w, damped(h), sparsity, block)
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-10)
    assert torch.equal(ours == 0, reference == 0)
    assert int((~keep).sum()) == w.numel() - round_keep(w.numel(), sparsity)
    assert bool((ours[~keep] == 0).all())


def test_nm_matches_the_dense_obs_reference() -> None:
    x = correlated_inputs(48, 16, seed=2).double()
    w = torch.randn(5, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = 2 * x.t() @ x
    ours, _ = sparsegpt_layer(w, h, 0.5, nm=(2, 4), block_size=8)
    reference = sparsegpt_reference(w, damped(h), 0.5, 8, nm=(2, 4))
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-10)


def test_through_the_operator_equals_the_reference_on_the_layers_inputs() -> None:
    """Calibration by hooks, in float32: the same answer as the reference on X itself."""
    model = layer(8, 24, dtype=torch.float32)
    x = correlated_inputs(96, 24).float()
    operator = bound({"kind": "sparsegpt", "block_size": 8}, model, [x[:40], x[40:]])
    (value,) = operator.project(weights_of(operator), 0.5).values()
    h = 2 * x.double().t() @ x.double()
    reference = sparsegpt_reference(model.weight.detach(), damped(h), 0.5, 8)
    assert torch.allclose(value.double(), reference, rtol=1e-4, atol=1e-5)
    assert value.dtype == torch.float32


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_lowers_the_reconstruction_error_below_magnitude(sparsity: float) -> None:
    model = layer(32, 48, dtype=torch.float32)
    x = correlated_inputs(512, 48).float()
    sgpt = bound({"kind": "sparsegpt", "block_size": 16}, model, [x])
    magnitude = bound({"kind": "magnitude", "scope": "layer"}, model)
    w = model.weight.detach()
    (ours,) = sgpt.project(weights_of(sgpt), sparsity).values()
    (plain,) = magnitude.project(weights_of(magnitude), sparsity).values()
    assert int((ours == 0).sum()) == int((plain == 0).sum())  # the same sparsity exactly
    assert reconstruction_error(w, ours, x) < reconstruction_error(w, plain, x)


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_holds_along_the_input_axis(pattern: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 8))
    x = torch.randn(32, 8, 6)
    operator = bound({"kind": "sparsegpt", "nm": list(pattern), "block_size": 16}, model, [x])
    out = operator.project(weights_of(operator), None)
    keep, group = pattern
    for name, value in out.items():
        oriented = value if value.dim() == 2 else value.permute(0, 2, 1)  # [out, k, in]
        groups = oriented.reshape(-1, group)
        assert nm_violations(value, keep, group) == 0
        assert bool(((groups != 0).sum(dim=1) == keep).all()), name  # exactly N (dense input)
    assert operator.label(None) == f"sparsegpt {keep}:{group}"


def test_idempotent_and_pruned_weights_exactly_zero() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 12)
    for config in ({"kind": "sparsegpt", "block_size": 8}, {"kind": "sparsegpt", "nm": [2, 4]}):
        operator = bound(config, model, [x])
        level = operator.fixed_sparsity() or 0.6
        once = operator.project(weights_of(operator), level)
        twice = operator.project(once, level)
        assert all(torch.equal(once[k], twice[k]) for k in once)
        masks = operator.masks(weights_of(operator), level)
        for name, value in once.items():
            assert torch.equal(masks[name], value != 0)


def test_the_model_is_not_changed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    operator = bound({"kind": "sparsegpt"}, model, [torch.randn(32, 12)])
    out = operator.project(weights_of(operator), 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    assert any(not torch.equal(before[k], v) for k, v in out.items())


def test_bad_configs() -> None:
    from pydantic import ValidationError

    from tests.plugins.posttrain.support import build

    with pytest.raises(ValidationError, match="multiple of the group size"):
        build({"kind": "sparsegpt", "nm": [2, 4], "block_size": 6})
    with pytest.raises(ValidationError, match="1 <= N < M"):
        build({"kind": "sparsegpt", "nm": [4, 4]})


@pytest.mark.parametrize("kind", ["sparsegpt", "wanda"])
def test_global_scope_allocates_like_global_magnitude(kind: str) -> None:
    """Per-layer targets from one magnitude threshold: each layer prunes exactly as many
    weights as global magnitude does there (SparseGPT; Wanda within a row's rounding)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    with torch.no_grad():
        model[2].weight.mul_(4)  # a layer of large weights: global magnitude spares it
    x = torch.randn(64, 8)
    operator = bound({"kind": kind, "scope": "global"}, model, [x])
    magnitude = bound({"kind": "magnitude", "scope": "global"}, model)
    ours = operator.project(weights_of(operator), 0.7)
    plain = magnitude.project(weights_of(magnitude), 0.7)
    for name in ours:
        zeros, expected = int((ours[name] == 0).sum()), int((plain[name] == 0).sum())
        rows = ours[name].shape[0]
        assert zeros == expected if kind == "sparsegpt" else abs(zeros - expected) <= rows
    assert int((plain["2.weight"] == 0).sum()) < 0.6 * plain["2.weight"].numel()  # not uniform
    assert operator.label(0.7) == f"{kind} global 0.7"
    from pydantic import ValidationError

    from tests.plugins.posttrain.support import build

    with pytest.raises(ValidationError, match="scope: global"):
        build({"kind": kind, "scope": "global", "nm": [2, 4]})
