"""A tiny random-init Llama (grouped key/value heads) for the language-model tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def tiny_llama(*, seed: int = 0, **config: Any) -> nn.Module:
    """``LlamaForCausalLM`` in eval mode, seeded, from small defaults that ``config`` overrides
    (``LlamaConfig`` keywords)."""
    import transformers

    settings = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        **config,
    }
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)).eval()
