"""A tiny random-init BERT configuration for the integration tests (transformers required)."""

from __future__ import annotations

from typing import Any


def tiny_bert_config(**overrides: Any) -> Any:
    """Vocabulary 64, width 32, two layers of two heads, sequences up to 16 tokens."""
    from transformers import BertConfig

    settings: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
        **overrides,
    }
    return BertConfig(**settings)
