"""Calibration (METHODS.md §10): GEMM columns, sequential mode in model order, one layer's
statistics at a time, BN left alone, and clean errors without data."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from torch import nn

from compressor import Session
from compressor.contract.errors import CompressorError, RecipeError
from compressor.plugin_api import select_targets
from compressor_plugins.posttrain import calibration
from compressor_plugins.posttrain.calibration import gemm_view, layer_columns, split_inputs
from compressor_plugins.posttrain.sparsegpt import sparsegpt_layer
from compressor_plugins.posttrain.wanda import row_keep
from tests.plugins.posttrain.support import bound, weights_of
from tests.support.cram import make_recipe, tiny_model

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(3, 5, 3),
        nn.Conv1d(3, 5, 5, stride=2, padding=2, dilation=2),
        nn.Conv1d(3, 5, 3, padding="same", dilation=2),
        nn.Conv1d(3, 5, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 1)),
        nn.Conv2d(3, 4, 3, padding="same", dilation=2, padding_mode="circular"),
    ],
    ids=lambda m: repr(m),
)
def test_gemm_columns_reproduce_the_convolution(conv: nn.Module) -> None:
    """``W2d @ X`` is the layer's output: the columns are exactly what the layer multiplies."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9) if isinstance(conv, nn.Conv1d) else torch.randn(2, 3, 7, 6)
    (target,) = select_targets(conv)
    columns = layer_columns(target, x)
    out = conv(x) - conv.bias[(slice(None), *([None] * (x.dim() - 2)))]
    expected = out.flatten(2).transpose(1, 2).reshape(-1, conv.out_channels)
    assert torch.allclose(columns @ gemm_view(conv.weight).t(), expected, atol=1e-5)


def two_layers() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))


def test_the_second_layer_sees_the_first_layers_compressed_outputs() -> None:
    model = two_layers()
    x = torch.randn(40, 6)
    operator = bound({"kind": "wanda"}, model, [x[:25], x[25:]])
    masks = operator.masks(weights_of(operator), 0.5)
    first, second = model[0], model[2]
    with torch.no_grad():
        pruned_hidden = torch.relu(x @ (first.weight * masks["0.weight"]).t() + first.bias)
        dense_hidden = torch.relu(first(x))

    def wanda(hidden: torch.Tensor) -> torch.Tensor:
        scores = second.weight.detach().abs() * hidden.norm(dim=0)[None, :]
        return row_keep(scores, 5)

    assert torch.equal(masks["2.weight"], wanda(pruned_hidden))
    assert not torch.equal(wanda(pruned_hidden), wanda(dense_hidden))  # the test can tell

    sgpt = bound({"kind": "sparsegpt"}, model, [x])
    out = sgpt.project(weights_of(sgpt), 0.5)
    with torch.no_grad():
        hidden = torch.relu(x @ out["0.weight"].t() + first.bias).double()
    expected, _ = sparsegpt_layer(second.weight.detach(), 2 * hidden.t() @ hidden, 0.5)
    assert torch.allclose(out["2.weight"], expected.float(), atol=1e-6)


class Reversed(nn.Module):
    """Registers ``a`` before ``b`` but calls ``b`` first: model order is execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 3)
        self.b = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(torch.relu(self.b(x)))


def test_layers_are_compressed_in_execution_order() -> None:
    torch.manual_seed(0)
    model = Reversed()
    x = torch.randn(30, 4)
    operator = bound({"kind": "wanda"}, model, [x])
    order = [t.name for t in operator.probe(model, [x]).order]  # type: ignore[attr-defined]
    assert order == ["b.weight", "a.weight"]
    masks = operator.masks(weights_of(operator), 0.6)
    with torch.no_grad():
        hidden = torch.relu(x @ (model.b.weight * masks["b.weight"]).t() + model.b.bias)
    scores = model.a.weight.detach().abs() * hidden.norm(dim=0)[None, :]
    assert torch.equal(masks["a.weight"], row_keep(scores, 2))


def test_one_layers_statistics_at_a_time_and_forwards_stop_at_the_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live: weakref.WeakSet[Any] = weakref.WeakSet()
    original = calibration.LayerStatistics.__init__

    def init(self: Any, *args: Any) -> None:
        original(self, *args)
        live.add(self)

    monkeypatch.setattr(calibration.LayerStatistics, "__init__", init)
    seen: list[int] = []
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    operator = bound({"kind": "sparsegpt"}, model, [torch.randn(10, 6) for _ in range(3)])
    layer = type(operator).compress_layer

    def counted(self: Any, *args: Any) -> Any:
        seen.append(len(live))
        return layer(self, *args)

    monkeypatch.setattr(type(operator), "compress_layer", counted)
    calls = []
    model[4].register_forward_pre_hook(lambda m, a: calls.append(1))
    operator.project(weights_of(operator), 0.5)
    assert seen == [1, 1, 1]
    assert len(calls) == 1 + 3  # the probe pass, then the last layer's own three batches


def test_bn_running_statistics_and_modes_are_left_as_they_were() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(48, 3),
    )  # fmt: skip
    model.train()
    model[1].running_mean.normal_()  # not at their reset values
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 2, 6)
    results = {}
    for bn in ("batch", "running"):
        operator = bound({"kind": "wanda", "calibration": {"bn": bn}}, model, [x])
        results[bn] = operator.masks(weights_of(operator), 0.5)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert all(m.training for m in model.modules())
    # the pruned conv, then this batch's own statistics, dropout off: what the linear layer
    # sees with bn: batch
    conv = model[0]
    with torch.no_grad():
        w = conv.weight * results["batch"]["0.weight"]
        h = nn.functional.conv1d(x, w, conv.bias, padding=1)
        h = (h - h.mean(dim=(0, 2), keepdim=True)) / torch.sqrt(
            h.var(dim=(0, 2), unbiased=False, keepdim=True) + model[1].eps
        )
        h = h * model[1].weight[None, :, None] + model[1].bias[None, :, None]
        h = torch.relu(h).flatten(1)
    scores = model[5].weight.detach().abs() * h.norm(dim=0)[None, :]
    assert torch.equal(results["batch"]["5.weight"], row_keep(scores, 24))
    assert not torch.equal(results["batch"]["5.weight"], results["running"]["5.weight"])


def test_inputs_are_split_along_the_batch_in_any_structure() -> None:
    batch = {"input_ids": torch.arange(10).view(5, 2), "mask": torch.ones(5, 2), "flag": 3}
    pieces = split_inputs(batch, 2)
    assert [p["input_ids"].shape[0] for p in pieces] == [2, 2, 1]
    assert torch.equal(torch.cat([p["input_ids"] for p in pieces]), batch["input_ids"])
    assert all(p["flag"] == 3 for p in pieces)
    assert len(split_inputs((torch.zeros(3, 4), torch.zeros(3)), 8)) == 1


def test_without_data_compressing_is_a_clean_error() -> None:
    operator = bound({"kind": "wanda"}, two_layers())
    with pytest.raises(CompressorError, match="needs calibration data"):
        operator.masks(weights_of(operator), 0.5)


WANDA_AT_0 = """
modifiers:
  - {type: oneshot, sparsity: 0.5, operator: {kind: wanda, calibration: {samples: 8, seed: 3}}}
"""


def test_a_session_without_data_refuses_data_aware_operators_before_training() -> None:
    recipe = make_recipe(None, extra=WANDA_AT_0)
    with pytest.raises(RecipeError, match=r"modifiers\[0\]\.operator\.calibration: wanda .*none"):
        Session(tiny_model(), recipe, steps_per_epoch=1)
    cram = make_recipe("{name: cram, sparsities: [0.5], operator: {kind: sparsegpt}}")
    with pytest.raises(RecipeError, match=r"wrapper\.operator\.calibration: sparsegpt"):
        Session(tiny_model(), cram, steps_per_epoch=1).optimizer()


def test_a_session_given_calibration_prunes_from_it() -> None:
    asked: list[tuple[int, ...]] = []
    x = torch.randn(8, 6)

    def calibrate(samples: int, seed: int, batches: int, size: int):  # type: ignore[no-untyped-def]
        asked.append((samples, seed, batches, size))
        yield x[:samples]

    model = tiny_model(bn=False)
    session = Session(
        model, make_recipe(None, extra=WANDA_AT_0), steps_per_epoch=1, calibration=calibrate
    )
    session.begin()  # the step-0 update prunes
    assert asked[-1] == (8, 3, 1, 8)  # one batch holding the whole fixed subset
    assert session.sparsity()["global"] == pytest.approx(0.5)
    expected = bound({"kind": "wanda"}, tiny_model(bn=False), [x]).masks(
        {t.name: t.param for t in select_targets(tiny_model(bn=False))}, 0.5
    )
    for name, mask in expected.items():
        assert torch.equal(session.masks.get(name), mask)


@pytest.mark.parametrize("n", [16, 256, 301, 768])
def test_gram_is_the_full_product_exactly_symmetric(n: int) -> None:
    x = torch.randn(500, n, generator=torch.Generator().manual_seed(n))
    h = calibration.gram(x)
    assert torch.equal(h, h.t())
    torch.testing.assert_close(h, x.t() @ x, rtol=1e-6, atol=1e-4)
    exact = calibration.gram(x.double())  # float64: the same sums as the float64 product
    torch.testing.assert_close(exact, x.double().t() @ x.double(), rtol=1e-12, atol=1e-9)
