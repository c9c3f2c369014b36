"""``compressor.compress``: a recipe's compression section applied to a model from given
calibration batches, in one call, with the metric before and after."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import compressor
from compressor.contract.errors import CompressorError
from tests.plugins.posttrain.support import bound

torch.set_num_threads(1)

RECIPE = """
name: prune
modifiers:
  - {type: oneshot, sparsity: 0.5, operator: {kind: sparsegpt, calibration: {sequential: block}}}
"""


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(12, 8, generator=g) for _ in range(3)]


def test_compress_compresses_in_place_as_the_operator_does() -> None:
    net, reference = model(), model()
    seen: list[float] = []

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            value = float(m(batches()[0]).square().mean())
        seen.append(value)
        return value

    report = compressor.compress(net, RECIPE, batches(), evaluate=evaluate)
    config: dict[str, Any] = {"kind": "sparsegpt", "calibration": {"sequential": "block"}}
    operator = bound(config, reference, batches())
    expected = operator.project({t.name: t.param for t in operator.targets}, 0.5)
    for name, value in expected.items():
        assert torch.equal(dict(net.named_parameters())[name], value), name
    assert report["sparsity"] == pytest.approx(0.5)
    assert report["metric"] == {"before": seen[0], "after": seen[1]}
    assert seen[0] != seen[1]


def test_compress_takes_a_mapping_and_refuses_empty_inputs() -> None:
    recipe = {
        "name": "p",
        "modifiers": [{"type": "oneshot", "sparsity": 0.5, "operator": {"kind": "wanda"}}],
    }
    report = compressor.compress(model(), recipe, batches())
    assert report["recipe"] == "p" and report["metric"] == {"before": None, "after": None}
    with pytest.raises(CompressorError, match="calibration data is empty"):
        compressor.compress(model(), recipe, [])
    with pytest.raises(CompressorError, match="no modifiers"):
        compressor.compress(model(), {"name": "p"}, batches())


def test_progress_is_reported_per_block() -> None:
    pytest.importorskip("transformers")
    from tests.plugins.posttrain.test_pipeline import llama, token_batches

    seen: list[tuple[str, float]] = []
    recipe = RECIPE.replace("sparsegpt", "wanda")
    compressor.compress(llama(3), recipe, token_batches(), progress=lambda *a: seen.append(a))
    assert [label for label, _ in seen] == ["block 1/3", "block 2/3", "block 3/3"]
    assert all(seconds >= 0 for _, seconds in seen)
