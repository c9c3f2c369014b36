"""The channel operator: coupled groups pruned together, scores, round_to, ignored layers, and
use through one-shot and GMP modifiers."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor import Session
from compressor.contract.errors import CompressorError, ConfigError
from compressor.host.manager import Plugins
from compressor.kit.selection import select_targets
from compressor.plugin_api import example_input, export_pruned
from compressor_plugins.channel.operator import Channel, keep_channels
from tests.conftest import make_recipe
from tests.support.channel import mnist1d_cnn, resnet20

STAGE1_PRODUCERS = ["conv1.weight"] + [f"layer1.{i}.conv2.weight" for i in range(3)]
STAGE1_CONSUMERS = [f"layer1.{i}.conv1.weight" for i in range(3)] + [
    "layer2.0.conv1.weight",
    "layer2.0.shortcut.0.weight",
]


def bound(model: nn.Module, **config: object) -> Channel:
    op = Channel(Channel.Config(kind="channel", **config))  # type: ignore[arg-type]
    op.bind(model, select_targets(model))
    return op


def weights(op: Channel) -> dict[str, torch.Tensor]:
    return {t.name: t.param for t in op.targets}


def dropped_rows(mask: torch.Tensor) -> set[int]:
    return {i for i in range(mask.shape[0]) if not bool(mask[i].any())}


def dropped_cols(mask: torch.Tensor) -> set[int]:
    return {i for i in range(mask.shape[1]) if not bool(mask[:, i].any())}


@pytest.mark.parametrize(
    ("size", "sparsity", "round_to", "keep"),
    [
        (16, 0.5, 1, 8),
        (64, 0.3, 8, 48),
        (64, 0.5, 8, 32),
        (16, 0.99, 1, 1),
        (10, 0.5, 8, 8),
        (12, 0.25, 1, 9),
    ],
)
def test_keep_channels(size: int, sparsity: float, round_to: int, keep: int) -> None:
    assert keep_channels(size, sparsity, round_to) == keep


def test_residual_group_is_pruned_together_by_its_summed_score() -> None:
    model = resnet20()
    op = bound(model)
    masks = op.masks(weights(op), 0.5)
    dropped = dropped_rows(masks["conv1.weight"])
    assert len(dropped) == 8
    for name in STAGE1_PRODUCERS:
        assert dropped_rows(masks[name]) == dropped, name
    for name in STAGE1_CONSUMERS:
        assert dropped_cols(masks[name]) == dropped, name
    # Scored as one channel: the L1 norm summed over the four coupled producers.
    total = sum(model.get_parameter(n).detach().abs().flatten(1).sum(1) for n in STAGE1_PRODUCERS)
    assert dropped == set(torch.argsort(total)[:8].tolist())
    # A single-layer score would disagree for random weights: coupling matters here.
    alone = model.conv1.weight.detach().abs().flatten(1).sum(1)
    assert dropped != set(torch.argsort(alone)[:8].tolist())


def test_classifier_is_never_output_pruned_but_loses_input_columns() -> None:
    op = bound(resnet20())
    masks = op.masks(weights(op), 0.5)
    assert dropped_rows(masks["fc.weight"]) == set()
    assert len(dropped_cols(masks["fc.weight"])) == 32
    assert "fc" not in {g.root for g in op.groups}


def test_l2_and_taylor_scores_pick_the_channels_they_define() -> None:
    model = mnist1d_cnn()
    name = "features.3.weight"  # a conv with no residual partner: its own rows are its score
    w = model.get_parameter(name)
    l2 = bound(model, score="l2").masks(weights(bound(model)), 0.5)[name]
    assert dropped_rows(l2) == set(torch.argsort(w.detach().pow(2).flatten(1).sum(1))[:4].tolist())

    g = torch.Generator().manual_seed(3)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=g)
    taylor_op = bound(model, score="taylor")
    taylor = taylor_op.masks(weights(taylor_op), 0.5)[name]
    expected = (w.detach() * w.grad).flatten(1).sum(1).abs()  # type: ignore[operator]
    assert dropped_rows(taylor) == set(torch.argsort(expected)[:4].tolist())


def test_taylor_without_gradients_falls_back_to_l1_with_a_warning() -> None:
    model = mnist1d_cnn()
    op = bound(model, score="taylor")
    with pytest.warns(UserWarning, match="l1"):
        masks = op.masks(weights(op), 0.5)
    l1 = bound(model).masks(weights(op), 0.5)
    assert all(torch.equal(masks[n], l1[n]) for n in masks)


def test_masks_and_project_work_on_any_weight_dict() -> None:
    """CrAM compresses perturbed copies: scores must come from the dict, not the model."""
    model = resnet20()
    op = bound(model)
    perturbed = {name: w.detach().clone() for name, w in weights(op).items()}
    weakest = int(torch.argsort(model.layer2[0].conv1.weight.detach().abs().flatten(1).sum(1))[0])
    perturbed["layer2.0.conv1.weight"][weakest] *= 100.0
    masks = op.masks(perturbed, 0.5)
    assert weakest not in dropped_rows(masks["layer2.0.conv1.weight"])
    projected = op.project(perturbed, 0.5)
    assert set(projected) == set(perturbed)
    for row in dropped_rows(masks["layer2.0.conv1.weight"]):
        assert bool((projected["layer2.0.conv1.weight"][row] == 0).all())
    # A partial dict gets masks for exactly its names.
    part = {"layer3.0.conv1.weight": perturbed["layer3.0.conv1.weight"]}
    assert set(op.masks(part, 0.5)) == set(part)
    assert len(dropped_rows(op.masks(part, 0.5)["layer3.0.conv1.weight"])) == 32


def test_round_to_gives_hardware_friendly_widths() -> None:
    op = bound(resnet20(), round_to=8)
    masks = op.masks(weights(op), 0.3)
    for name in ("conv1.weight", "layer2.0.conv1.weight", "layer3.1.conv1.weight"):
        kept = masks[name].shape[0] - len(dropped_rows(masks[name]))
        assert kept % 8 == 0 and kept > 0, (name, kept)


def test_ignored_layers_by_name_are_not_output_pruned() -> None:
    op = bound(resnet20(), ignore=["layer1.*.conv1", "re:layer3\\.0\\.shortcut\\.0"])
    masks = op.masks(weights(op), 0.5)
    for i in range(3):
        assert dropped_rows(masks[f"layer1.{i}.conv1.weight"]) == set()
    # The stage-3 residual group contains the ignored shortcut: none of it is pruned.
    assert dropped_rows(masks["layer3.0.conv2.weight"]) == set()
    assert len(dropped_rows(masks["layer2.0.conv1.weight"])) == 16


def test_example_input_comes_from_config_attribute_or_first_layer() -> None:
    assert tuple(example_input(resnet20()).shape) == (1, 3, 16, 16)
    assert tuple(example_input(mnist1d_cnn()).shape) == (1, 1, 40)  # probed
    assert tuple(example_input(mnist1d_cnn(), (1, 39)).shape) == (1, 1, 39)
    odd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    with pytest.raises(ValueError, match="example_input_shape"):
        example_input(odd)
    with pytest.raises(ConfigError, match="example_input_shape"):
        bound(odd)
    assert bound(odd, example_input_shape=[3, 7, 7]).groups


def test_missing_torch_pruning_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(CompressorError, match="torch-pruning"):
        bound(mnist1d_cnn())


ONESHOT = """\
name: channel-oneshot
model: {name: resnet20}
data: {name: cifar_synthetic, image_size: 16, samples: 32, test_samples: 8}
train: {epochs: 1}
optimizer: {name: sgd, lr: 0.01}
modifiers:
  - type: oneshot
    operator: {kind: channel, score: l2}
    sparsity: 0.5
"""


def test_oneshot_modifier_masks_coupled_channels(plugins: Plugins) -> None:
    model = resnet20()
    session = Session(model, make_recipe(ONESHOT, plugins), steps_per_epoch=1)
    session.begin()
    assert len(dropped_rows(model.layer1[0].conv2.weight.detach().ne(0).flatten(1))) == 8
    assert dropped_rows(session.masks.get("conv1.weight")) == dropped_rows(  # type: ignore[arg-type]
        session.masks.get("layer1.2.conv2.weight")  # type: ignore[arg-type]
    )
    small, report = export_pruned(model, dict(session.masks.state_dict()))
    assert report["macs"]["pruned"] < 0.3 * report["macs"]["dense"]


GMP = """\
name: channel-gmp
model: {name: mnist1d_cnn, width: 8}
data: {name: synthetic, features: 40, classes: 10}
train: {epochs: 1}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-3}
modifiers:
  - type: gmp
    operator: {kind: channel, score: taylor}
    schedule: {kind: linear, initial: 0.0, final: 0.5, start: 0, end: 4, every: 1}
"""


def test_gmp_prunes_channels_gradually_and_the_result_exports(plugins: Plugins) -> None:
    model = mnist1d_cnn()
    model.train()
    session = Session(model, make_recipe(GMP, plugins), steps_per_epoch=6)
    optimizer = session.optimizer()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 40, generator=g), torch.randint(0, 10, (16,), generator=g)
    pruned_per_step = []
    for _ in range(6):

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        session.step_end(optimizer.step(closure))
        mask = session.masks.get("features.3.weight")
        pruned_per_step.append(0 if mask is None else len(dropped_rows(mask)))
        # Masked rows and their consumers' columns stay exactly zero through SGD momentum.
        rows = dropped_rows(mask) if mask is not None else set()
        for r in rows:
            assert bool((model.features[3].weight[r] == 0).all())
            assert bool((model.features[6].weight[:, r] == 0).all())
    assert pruned_per_step == sorted(pruned_per_step)
    assert pruned_per_step[0] < pruned_per_step[-1] == 4
    small, report = export_pruned(model.eval(), dict(session.masks.state_dict()))
    assert report["max_abs_diff"] <= 1e-5
    assert all(group["kept"] == 4 for group in report["groups"].values())


def test_output_layer_behind_a_weightless_op_is_still_protected() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.LogSoftmax(dim=1)).eval()
    op = bound(model, example_input_shape=[6])
    masks = op.masks(weights(op), 0.5)
    assert dropped_rows(masks["2.weight"]) == set()
    assert len(dropped_rows(masks["0.weight"])) == 4
    small, _ = export_pruned(model, masks)
    assert small(torch.randn(3, 6)).shape == (3, 4)
