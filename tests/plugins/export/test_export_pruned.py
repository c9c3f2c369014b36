"""``pruned`` export: the physically smaller model reproduces the masked one, is smaller, and
its file reloads with ``weights_only=True`` and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.host.manager import Plugins
from compressor.kit.selection import select_targets
from compressor.plugin_api import ExportError, export_pruned
from compressor.train.host import RunHost
from compressor.train.loop import prepare
from compressor_plugins.channel.operator import Channel
from compressor_plugins.export import pruned as pruned_export
from compressor_plugins.export.pruned import (
    load_pruned,
    pruned_payload,
    save_pruned,
)
from tests.conftest import make_recipe
from tests.support.channel import RESNET_SHAPE, mnist1d_cnn, resnet20


def channel_masks(model: nn.Module, sparsity: float = 0.5) -> dict[str, torch.Tensor]:
    op = Channel(Channel.Config(kind="channel"))  # type: ignore[call-arg]
    op.bind(model, select_targets(model))
    return op.masks({t.name: t.param for t in op.targets}, sparsity)


def masked_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            out.get_parameter(name).mul_(mask)
    return out.eval()


@pytest.mark.parametrize(
    ("build", "shape"),
    [(mnist1d_cnn, (1, 40)), (resnet20, RESNET_SHAPE)],
    ids=["mnist1d", "resnet20"],
)
def test_exported_model_matches_masked_model_and_is_smaller(build, shape) -> None:  # type: ignore[no-untyped-def]
    model = build()
    masks = channel_masks(model)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    small, report = export_pruned(model, masks)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # untouched
    x = torch.randn(5, *shape)
    with torch.no_grad():
        expected = masked_copy(model, masks)(x)
        assert (small(x) - expected).abs().max().item() <= 1e-5
        assert expected.abs().max().item() > 0.1  # a meaningful comparison
    assert report["params"]["pruned"] < 0.5 * report["params"]["dense"]
    assert report["macs"]["pruned"] < 0.5 * report["macs"]["dense"]
    assert sum(p.numel() for p in small.parameters()) == report["params"]["pruned"]


def test_width_multiple_keeps_zero_channels_up_to_a_multiple_and_the_same_outputs() -> None:
    model = resnet20()  # widths 16/32/64, halved by the masks to 8/16/32
    masks = channel_masks(model)
    _, narrow = export_pruned(model, masks)
    wide, report = export_pruned(model, masks, width_multiple=16)
    kept = sorted(g["kept"] for g in report["groups"].values())
    assert sorted(g["kept"] for g in narrow["groups"].values()) != kept  # 8 -> 16 somewhere
    for group in report["groups"].values():
        assert group["kept"] % 16 == 0 or group["kept"] == group["channels"]
    for root, group in report["groups"].items():  # never narrower than without the multiple
        assert group["kept"] >= narrow["groups"][root]["kept"]
    assert narrow["params"]["pruned"] < report["params"]["pruned"] < report["params"]["dense"]
    x = torch.randn(3, *RESNET_SHAPE)
    with torch.no_grad():
        assert (wide(x) - masked_copy(model, masks)(x)).abs().max().item() <= 1e-5


def test_zeroed_channels_are_found_without_masks() -> None:
    model = mnist1d_cnn()
    with torch.no_grad():
        model.features[3].weight[[1, 5]] = 0
        model.features[6].weight[:, [1, 5]] = 0
    small, report = export_pruned(model)
    assert report["groups"]["features.3"] == {"channels": 8, "kept": 6}
    assert small.features[3].out_channels == 6 and small.features[4].num_features == 6
    assert report["groups"]["features.6"]["kept"] == 8


def test_producer_rows_alone_are_not_removed_when_the_channel_is_not_dead() -> None:
    """A zero conv row followed by BN emits a constant its consumer reads: keep it."""
    model = mnist1d_cnn()
    with torch.no_grad():
        model.features[3].weight[2] = 0
    small, report = export_pruned(model)
    assert report["groups"]["features.3"]["kept"] == 8
    assert report["max_abs_diff"] <= 1e-5


def test_exported_file_reloads_with_weights_only_and_runs(tmp_path: Path) -> None:
    model = resnet20()
    small, report = export_pruned(model, channel_masks(model))
    path = save_pruned(pruned_payload(small, report["input_shape"]), tmp_path / "small.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["modules"]["layer3.0.conv1"]["out_channels"] == 32
    reloaded = load_pruned(path, resnet20())
    x = torch.randn(3, *RESNET_SHAPE)
    with torch.no_grad():
        assert torch.equal(reloaded(x), small(x))
    assert sum(p.numel() for p in reloaded.parameters()) == report["params"]["pruned"]


RECIPE = """\
name: channel-export
model: {name: resnet20}
data: {name: cifar_synthetic, image_size: 16, samples: 32, test_samples: 8}
optimizer: {name: sgd, lr: 0.01}
modifiers:
  - type: oneshot
    operator: {kind: channel}
    sparsity: 0.5
"""


def test_export_hook_writes_model_and_report(
    plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pruned_export, "LATENCY_REPEATS", 2)
    recipe = make_recipe(RECIPE, plugins)
    prepared = prepare(recipe, plugins)
    model, context = prepared.model, prepared.context
    prepared.session.begin()
    registry = plugins.registries.exporters
    with pytest.raises(
        KeyError, match="unknown export format 'prunde' \\(did you mean 'pruned'\\?\\)"
    ):
        registry.get("prunde")
    exporter = registry.get("pruned").cls(registry.get("pruned").config())
    written = exporter.export(context, model, tmp_path / "m.pt")
    assert written == tmp_path / "m.pt"
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["params"]["pruned"] < report["params"]["dense"]
    assert report["file_bytes"]["pruned"] < report["file_bytes"]["dense"]
    assert set(report["latency_cpu"]) == {"threads", "batch1", "batch64"}
    assert report["latency_cpu"]["batch1"]["pruned"]["median_ms"] > 0
    with pytest.raises(ExportError, match="needs a dense model or a host"):
        load_pruned(written)
    reloaded = load_pruned(written, host=RunHost(plugins))  # rebuilt from the spec
    assert reloaded(torch.randn(2, *RESNET_SHAPE)).shape == (2, 10)
