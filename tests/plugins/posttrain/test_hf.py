"""Data-aware operators on a Hugging Face GPT-2 (Conv1D stored [in, out], a tied lm_head):
calibration through token-id batches in a mapping, sequential over the blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.host.manager import Plugins
from compressor.plugin_api import nm_violations
from tests.plugins.posttrain.support import bound, weights_of
from tests.plugins.zoo.test_hf import GPT2, build

transformers = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed"
)
torch.set_num_threads(1)


def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 257, (8, 16), generator=g)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "sparsegpt", "calibration": {"batch_size": 4}},
        {"kind": "wanda", "nm": [2, 4]},
        {"kind": "gptq", "bits": 4},
    ],
    ids=lambda c: c["kind"],
)
def test_gpt2_compresses_in_its_own_layout(plugins: Plugins, config: dict) -> None:  # type: ignore[type-arg]
    model = build(GPT2, plugins)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    operator = bound(config, model, batches())
    order = [t.name for t in operator.probe(model, batches()).order]  # type: ignore[attr-defined]
    assert order[0] == "transformer.h.0.attn.c_attn.weight"
    assert order[-1] == "transformer.h.1.mlp.c_proj.weight"  # the tied lm_head stays dense
    assert "transformer.wte.weight" not in {t.name for t in operator.targets}
    level = operator.fixed_sparsity() if operator.fixed_sparsity() is not None else 0.5
    out = operator.project(weights_of(operator), level)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for target in operator.targets:
        value = out[target.name]
        assert value.shape == target.param.shape
        if config["kind"] == "wanda":  # groups along the input axis: rows of the [in, out] weight
            oriented = value.t() if target.transposed else value
            assert nm_violations(oriented, 2, 4) == 0, target.name
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in out.items():
            params[name].copy_(value)
    assert bool(torch.isfinite(logits(model, batches()[0])).all())
