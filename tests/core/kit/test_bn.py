"""BatchNorm freezing for extra passes and re-calibration after one-shot compression (§6)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compressor.kit.bn import batchnorm_layers, freeze_bn_stats, recalibrate_bn

torch.set_num_threads(1)


def _layer_and_input(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "bn1d":
        return nn.BatchNorm1d(4), torch.randn(8, 4) * 3 + 1
    if kind == "bn1d_3d_input":
        return nn.BatchNorm1d(4), torch.randn(8, 4, 5) * 3 + 1
    if kind == "bn1d_cumulative":
        return nn.BatchNorm1d(4, momentum=None), torch.randn(8, 4) * 3 + 1
    if kind == "bn2d":
        return nn.BatchNorm2d(4), torch.randn(8, 4, 3, 3) * 3 + 1
    if kind == "bn2d_cumulative":
        return nn.BatchNorm2d(4, momentum=None), torch.randn(8, 4, 3, 3) * 3 + 1
    if kind == "bn3d":
        return nn.BatchNorm3d(4), torch.randn(4, 4, 2, 3, 3) * 3 + 1
    if kind == "syncbn":
        return nn.SyncBatchNorm(4), torch.randn(8, 4, 3, 3) * 3 + 1
    raise AssertionError(kind)


KINDS = [
    "bn1d",
    "bn1d_3d_input",
    "bn1d_cumulative",
    "bn2d",
    "bn2d_cumulative",
    "bn3d",
    "syncbn",
]


def _warm(layer: nn.Module, x: torch.Tensor) -> None:
    """A few ordinary train steps so the running statistics are not at their initial values."""
    layer.train()
    for i in range(3):
        layer(x + i)


@pytest.mark.parametrize("kind", KINDS)
def test_freeze_leaves_running_stats_and_count_exactly_unchanged(kind: str) -> None:
    layer, x = _layer_and_input(kind)
    _warm(layer, x)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with freeze_bn_stats(layer):
        layer(x * 2 - 5)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert layer.track_running_stats is True


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_forward_still_normalises_with_batch_statistics(kind: str) -> None:
    layer, x = _layer_and_input(kind)
    _warm(layer, x)
    reference = copy.deepcopy(layer)
    inputs = x * 2 - 5
    with freeze_bn_stats(layer):
        frozen_out = layer(inputs)
    expected = reference(inputs)  # an ordinary train-mode forward: batch statistics
    torch.testing.assert_close(frozen_out, expected)
    dims = [d for d in range(inputs.dim()) if d != 1]
    mean = frozen_out.mean(dim=dims)
    torch.testing.assert_close(mean, layer.bias.detach(), atol=1e-5, rtol=0)


def test_cumulative_average_resumes_as_if_the_frozen_pass_never_happened() -> None:
    """momentum=None averages by num_batches_tracked, so the count must be restored too."""
    layer, x = _layer_and_input("bn1d_cumulative")
    _warm(layer, x)
    twin = copy.deepcopy(layer)
    with freeze_bn_stats(layer):
        layer(x * 10)
    layer(x + 7)
    twin(x + 7)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key


def test_freeze_restores_on_exception_and_covers_nested_modules() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm1d(4)))
    x = torch.randn(8, 4)
    model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), freeze_bn_stats(model):
        model(x * 3)
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(layer.track_running_stats for layer in batchnorm_layers(model))


def test_freeze_ignores_layers_that_track_no_statistics() -> None:
    layer = nn.BatchNorm1d(4, track_running_stats=False)
    with freeze_bn_stats(layer):
        out = layer(torch.randn(8, 4))
    assert layer.track_running_stats is False
    assert out.shape == (8, 4)


def _calibration_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.BatchNorm1d(3, momentum=None), nn.Linear(3, 5), nn.BatchNorm1d(5, momentum=0.3)
    )


def draws(x: torch.Tensor, batches: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [x[torch.randperm(x.shape[0], generator=generator)[:size]] for _ in range(batches)]


def test_recalibration_changes_no_weight_and_restores_momentum() -> None:
    model = _calibration_model()
    params = {k: v.clone() for k, v in model.named_parameters()}
    x = torch.randn(200, 3) * 2 + 4
    recalibrate_bn(model, draws(x, 7, 32))
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
    assert model[0].momentum is None and model[2].momentum == 0.3
    assert not model.training


def test_recalibration_resets_then_estimates_from_the_calibration_data() -> None:
    model = _calibration_model()
    with torch.no_grad():
        model[0].running_mean.fill_(100.0)
        model[0].num_batches_tracked.fill_(1000)
    x = torch.randn(400, 3) * 2 + torch.tensor([4.0, -1.0, 0.5])
    recalibrate_bn(model, draws(x, 100, 128))
    first = model[0]
    assert int(first.num_batches_tracked) == 100  # reset, then one per batch
    torch.testing.assert_close(first.running_mean, x.mean(0), atol=0.25, rtol=0)
    torch.testing.assert_close(first.running_var, x.var(0), atol=0.6, rtol=0)


def test_recalibration_without_batches_keeps_the_statistics() -> None:
    model = _calibration_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_bn(model, [])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_recalibration_calls_the_model_as_told() -> None:
    model = _calibration_model()
    seen: list[int] = []

    def forward(m: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(inputs["x"].shape[0])
        return m(inputs["x"])

    recalibrate_bn(model, [{"x": b} for b in draws(torch.randn(50, 3), 3, 10)], forward=forward)
    assert seen == [10, 10, 10] and int(model[0].num_batches_tracked) == 3


@pytest.mark.parametrize("count", [1, 5, 20, 100])
def test_recalibrated_statistics_are_the_plain_average_of_the_batches(count: int) -> None:
    """A cumulative average: with momentum 0.1, 1 or 5 batches would leave the statistics
    mostly at their reset values (mean 0, variance 1)."""
    torch.manual_seed(count)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    x = torch.randn(500, 3) * 3 + 2
    batches = draws(x, count, 32, seed=count)
    recalibrate_bn(model, batches)
    with torch.no_grad():
        outs = [model[0](b) for b in batches]
    mean = torch.stack([o.mean(0) for o in outs]).mean(0)
    var = torch.stack([o.var(0, unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[1].running_var, var, atol=1e-4, rtol=1e-5)
    assert model[1].momentum == 0.1  # the layer's own momentum is back
