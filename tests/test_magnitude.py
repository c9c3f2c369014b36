"""Magnitude top-k masks and tensor selection (METHODS.md §1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.plugins import Plugins
from compressor.selection import select_targets


def operator(plugins: Plugins, model: nn.Module, **config: object):  # type: ignore[no-untyped-def]
    from compressor.selection import select

    entry = plugins.registries.operators.get("magnitude")
    cfg = entry.config.model_validate({"kind": "magnitude", **config})
    op = entry.cls(cfg)
    op.bind(model, select(model, cfg))
    return op


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 5), nn.LayerNorm(5), nn.Linear(5, 3)
    )


def test_default_selection_is_linear_and_conv_weights_only() -> None:
    names = [t.name for t in select_targets(net())]
    assert names == ["0.weight", "4.weight", "6.weight"]


def test_include_exclude_by_glob_and_regex() -> None:
    assert [t.name for t in select_targets(net(), include=["4.*"])] == ["4.weight"]
    assert [t.name for t in select_targets(net(), exclude=["re:[06]\\.weight"])] == ["4.weight"]
    assert [t.name for t in select_targets(net(), modules=["conv"])] == ["0.weight"]


def test_global_keeps_exactly_round_of_one_minus_s_times_n(plugins: Plugins) -> None:
    model = net()
    op = operator(plugins, model)
    weights = {t.name: t.param for t in op.targets}
    n = sum(w.numel() for w in weights.values())
    for s in (0.0, 0.3, 0.5, 0.77, 0.9, 0.99):
        masks = op.masks(weights, s)
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == int((1 - s) * n + 0.5)
        # global: one threshold — every kept magnitude >= every pruned magnitude
        flat_w = torch.cat([w.detach().abs().flatten() for w in weights.values()])
        flat_m = torch.cat([m.flatten() for m in masks.values()])
        if 0 < kept < n:
            assert flat_w[flat_m].min() >= flat_w[~flat_m].max()


def test_layer_scope_prunes_each_tensor_to_target(plugins: Plugins) -> None:
    model = net()
    op = operator(plugins, model, scope="layer")
    weights = {t.name: t.param for t in op.targets}
    masks = op.masks(weights, 0.5)
    for name, mask in masks.items():
        assert int(mask.sum()) == int(0.5 * weights[name].numel() + 0.5)


def test_ties_broken_deterministically(plugins: Plugins) -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    op = operator(plugins, model)
    weights = {"0.weight": model[0].weight}
    first = op.masks(weights, 0.5)["0.weight"]
    assert int(first.sum()) == 8
    assert torch.equal(first, op.masks(weights, 0.5)["0.weight"])


def test_magnitude_needs_a_sparsity(plugins: Plugins) -> None:
    model = net()
    op = operator(plugins, model)
    with pytest.raises(ValueError, match="needs a target sparsity"):
        op.masks({t.name: t.param for t in op.targets}, None)
