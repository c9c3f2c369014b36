"""``partial_groups``: a group size that does not divide a layer's inputs is a config error
naming the layers, a documented skip (dense, one warning), or for GPTQ a smaller last group."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from compressor.plugin_api import ConfigError, NMSkippedWarning
from compressor_plugins.posttrain.quant import rtn
from tests.plugins.posttrain.support import bound, weights_of

torch.set_num_threads(1)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


INPUTS = [torch.randn(16, 6, generator=torch.Generator().manual_seed(1))]


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "wanda", "nm": [2, 4], "partial_groups": "error"},
        {"kind": "sparsegpt", "nm": [2, 4], "partial_groups": "error"},
        {"kind": "gptq", "bits": 4, "group_size": 4, "partial_groups": "error"},
    ],
    ids=lambda c: c["kind"],
)
def test_error_names_the_layers(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"not: 0\.weight \(input dim 6\) \(exclude them"):
        bound(config, model(), INPUTS)


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "wanda", "nm": [2, 4]},
        {"kind": "gptq", "bits": 4, "group_size": 4, "partial_groups": "skip"},
    ],
    ids=lambda c: c["kind"],
)
def test_skip_leaves_the_layer_dense_with_one_warning(config: dict[str, Any]) -> None:
    net = model()
    with pytest.warns(NMSkippedWarning, match=r"0\.weight \(input dim 6\)"):
        operator = bound(config, net, INPUTS)
    fixed = operator.fixed_sparsity()
    out = operator.project(weights_of(operator), fixed)
    assert torch.equal(out["0.weight"], net[0].weight)
    assert not torch.equal(out["2.weight"], net[2].weight)


def test_gptq_default_quantizes_with_a_smaller_last_group() -> None:
    net = model()
    operator = bound({"kind": "gptq", "bits": 4, "group_size": 4}, net, INPUTS)
    out = operator.project(weights_of(operator), 0.0)
    assert not torch.equal(out["0.weight"], net[0].weight)
    last = out["0.weight"][:, 4:]  # the last group has 2 columns, on a grid of its own
    assert torch.equal(rtn(last, 4, None)[0], last)
