"""The realised evaluator: mask sparsity, exported size and latency, reported separately."""

from __future__ import annotations

import torch
from torch import nn

from compressor import Session
from compressor.host.manager import Plugins
from compressor.plugin_api import DataInfo, DataSplits
from compressor_plugins.evaluate.realised import Realised
from compressor_plugins.zoo.models import MNIST1DCNN
from tests.conftest import make_recipe
from tests.support.context import run_context

RECIPE = """\
name: r
model: {name: mnist1d_cnn, width: 8}
data: {name: synthetic, features: 40, classes: 10}
optimizer: {name: sgd}
modifiers:
  - {type: oneshot, sparsity: 0.5, operator: OPERATOR}
"""


def evaluate(plugins: Plugins, operator: str) -> dict:  # type: ignore[type-arg]
    torch.manual_seed(0)
    model = MNIST1DCNN(40, 10, width=8)
    session = Session(
        model,
        make_recipe(RECIPE.replace("OPERATOR", operator), plugins),
        steps_per_epoch=4,
        plugins=plugins,
    )
    session.begin()
    x = torch.randn(16, 40)
    data = DataSplits(
        x,
        torch.zeros(16, dtype=torch.long),
        x,
        torch.zeros(16, dtype=torch.long),
        DataInfo((40,), 10),
    )
    config = Realised.Config(batch_sizes=[1, 4], repeats=3)
    evaluation = Realised(config).run(run_context(session, data), model)
    assert [c.title for c in evaluation.columns] == ["export KB", "×b1", "×b4"]
    assert evaluation.metrics["stored_kb"] == evaluation.details["bytes"]["exported"] / 1024
    return evaluation.details


def test_unstructured_masks_stay_dense(plugins: Plugins) -> None:
    result = evaluate(plugins, "{kind: magnitude}")
    assert result["mask_sparsity"] > 0.45
    assert result["physically_smaller"] is False
    assert result["bytes"]["exported"] == result["bytes"]["trained"]
    assert set(result["latency_ms"]) == {"batch1", "batch4"}


def test_channel_masks_export_a_smaller_model(plugins: Plugins) -> None:
    result = evaluate(plugins, "{kind: channel}")
    assert result["physically_smaller"] is True
    assert result["bytes"]["exported"] < result["bytes"]["trained"]
    assert result["params"]["pruned"] < 0.6 * result["params"]["dense"]
    assert result["latency_ms"]["batch4"]["speedup"] > 0


def test_trained_model_is_not_modified(plugins: Plugins) -> None:
    torch.manual_seed(0)
    model: nn.Module = MNIST1DCNN(40, 10, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = Session(
        model,
        make_recipe(RECIPE.replace("OPERATOR", "{kind: channel}"), plugins),
        steps_per_epoch=4,
        plugins=plugins,
    )
    session.begin()
    masked = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 40)
    data = DataSplits(
        x,
        torch.zeros(8, dtype=torch.long),
        x,
        torch.zeros(8, dtype=torch.long),
        DataInfo((40,), 10),
    )
    Realised(Realised.Config(batch_sizes=[1], repeats=2)).run(run_context(session, data), model)
    assert all(torch.equal(masked[k], v) for k, v in model.state_dict().items())
    assert before.keys() == masked.keys()
