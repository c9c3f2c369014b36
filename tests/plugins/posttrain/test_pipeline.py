"""The block-by-block calibration pipeline (METHODS.md §10): ``sequential: exact`` gives the
layer-by-layer driver's weights bit for bit, block forwards grow linearly with depth, layers
reading one input share one statistic, and models without repeated blocks keep working."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.plugins.posttrain.support import bound, layer_by_layer, weights_of
from tests.support.cram import tiny_model

transformers = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed"
)
torch.set_num_threads(1)
SEQUENTIAL = False

CONFIGS = [
    {"kind": "wanda"},
    {"kind": "sparsegpt", "block_size": 16},
    {"kind": "gptq", "bits": 4, "group_size": 16},
]


def llama(layers: int = 2, seed: int = 0) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.eval()
    return model


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def token_batches(count: int = 3, size: int = 2, length: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(0, 64, (size, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def level(operator: Any) -> float:
    fixed = operator.fixed_sparsity()
    return 0.5 if fixed is None else fixed


def assert_same(
    new: dict[str, tuple[torch.Tensor, torch.Tensor]],
    old: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    assert new.keys() == old.keys()
    for name in old:
        assert torch.equal(new[name][0], old[name][0]), name
        assert torch.equal(new[name][1], old[name][1]), name


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c["kind"])
@pytest.mark.parametrize("model", ["llama", "gpt2", "mlp"])
def test_exact_mode_equals_the_layer_by_layer_driver(config: dict[str, Any], model: str) -> None:
    if model == "mlp":
        net, inputs = tiny_model(), [torch.randn(8, 6), torch.randn(8, 6)]
        if config["kind"] == "gptq":
            config = {"kind": "gptq", "bits": 4}
    else:
        net, inputs = (llama() if model == "llama" else gpt2()), token_batches()
    config = {**config, "calibration": {"sequential": "exact"}} if SEQUENTIAL else config
    include = ["*"] if model == "gpt2" else []  # the tied head too: outside the blocks
    operator = bound(config, net, inputs, include=include)
    weights = {k: v.detach().clone() for k, v in weights_of(operator).items()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    old = layer_by_layer(operator, weights, level(operator))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    new = operator.compress(weights, level(operator))  # type: ignore[attr-defined]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert_same(new, old)
