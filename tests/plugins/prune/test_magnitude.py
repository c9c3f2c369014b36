"""Magnitude top-k masks and tensor selection (METHODS.md §1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.host.manager import Plugins
from compressor.kit.selection import select_targets


def operator(plugins: Plugins, model: nn.Module, **config: object):  # type: ignore[no-untyped-def]
    from compressor.kit.selection import select

    entry = plugins.registries.operators.get("magnitude")
    cfg = entry.config.model_validate({"kind": "magnitude", **config})
    op = entry.cls(cfg)
    op.bind(model, select(model, cfg))
    return op


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6, 5),
        nn.LayerNorm(5),
        nn.Linear(5, 3),
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


@pytest.mark.parametrize("distribution", ["normal", "many_zeros", "few_values"])
def test_bracket_selection_matches_a_stable_sort_on_large_inputs(
    distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compressor.kit.topk as magnitude
    from compressor.plugin_api import keep_count, topk_masks

    # shrink the thresholds so small tensors take the large-model path (sampled bracket)
    monkeypatch.setattr(magnitude, "SELECT_DIRECTLY", 4096)
    monkeypatch.setattr(magnitude, "SAMPLE", 512)
    g = torch.Generator().manual_seed(1)
    sizes = [3000, 7, 6000, 1000]
    chunks = [torch.randn(n, generator=g).abs() for n in sizes]
    if distribution == "many_zeros":  # late GMP: most weights already exactly zero
        chunks = [c * (torch.rand(c.numel(), generator=g) > 0.85) for c in chunks]
    if distribution == "few_values":  # heavy ties everywhere
        chunks = [torch.randint(0, 5, (c.numel(),), generator=g).float() for c in chunks]
    flat = torch.cat(chunks)
    for sparsity in (0.5, 0.9, 0.97):
        keep = keep_count(flat.numel(), sparsity)
        expected = torch.zeros(flat.numel(), dtype=torch.bool)
        expected[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
        assert torch.equal(torch.cat(topk_masks(chunks, keep)), expected)


def test_tied_weights_are_one_target() -> None:
    embedding = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = nn.Sequential(embedding, head)
    assert [t.name for t in select_targets(model, modules=["linear", "embedding"])] == ["0.weight"]


def test_operators_label_their_targets_distinctly(plugins: Plugins) -> None:
    def label(config: dict, sparsity: float | None) -> str:  # type: ignore[type-arg]
        entry = plugins.registries.operators.get(config["kind"])
        return str(entry.cls(entry.config.model_validate(config)).label(sparsity))

    labels = {
        label({"kind": "magnitude", "scope": "global"}, 0.9),
        label({"kind": "magnitude", "scope": "layer"}, 0.9),
        label({"kind": "nm", "keep": 2, "group": 4}, None),
        label({"kind": "nm", "keep": 2, "group": 4}, 0.25),
        label({"kind": "block", "block": [4, 4]}, 0.5),
        label({"kind": "block", "block": [1, 4]}, 0.5),
    }
    assert labels == {"0.9", "layer 0.9", "2:4", "2:4 0.25", "block 4x4 0.5", "block 1x4 0.5"}
