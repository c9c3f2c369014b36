"""The ``hf`` model: any Hugging Face ``transformers`` architecture, built from a config.

``model: {name: hf, architecture: GPT2LMHeadModel, config: {n_layer: 2, n_embd: 64}}`` builds a
random-init model from an inline config (or ``config_path``, a local directory holding
``config.json``); ``weights`` loads trained weights from a local directory
(``from_pretrained(..., local_files_only=True)``) or a ``.safetensors`` / ``.bin`` / ``.pt`` file
(``weights_only`` loading: no pickled code runs). Nothing is ever downloaded: the hub is
switched off (``HF_HUB_OFFLINE``) before ``transformers`` is imported.

From the data, when the config does not say: ``vocab_size`` (token data), the number of labels
(``*ForSequenceClassification`` and friends) and a position range that covers the block length.
The task reads ``.logits`` from the output, so no wrapper is needed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import CompressorError, DataInfo, ModelBuilder, TypeConfig, hookimpl

POSITION_FIELDS = ("n_positions", "max_position_embeddings")


def require_transformers() -> ModuleType:
    """Import ``transformers`` offline, or say which extra is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as exc:
        raise CompressorError(
            "the 'hf' model needs the 'transformers' package: pip install 'compressor[hf]'"
        ) from exc
    return transformers


def architecture_class(transformers: ModuleType, name: str) -> Any:
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        known = [n for n in dir(transformers) if n.endswith(("Model", "LMHeadModel"))]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise CompressorError(f"'{name}' is not a transformers model class{hint}")
    return cls


def load_weights(model: nn.Module, path: Path) -> None:
    """Trained weights from a local file, loaded without running pickled code."""
    state: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {
        n for n, _ in model.named_parameters()
    }
    missing = [n for n in missing if n not in tied]
    if missing or unexpected:
        raise CompressorError(
            f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


class HFModel(ModelBuilder):
    class Config(TypeConfig):
        name: Literal["hf"]
        architecture: str = Field(description="a transformers model class, e.g. GPT2LMHeadModel")
        config: dict[str, Any] = Field(default_factory=dict, description="config fields")
        config_path: str | None = Field(None, description="a local folder with config.json")
        weights: str | None = Field(None, description="local folder, .safetensors or .bin/.pt")

    def build(self, info: DataInfo) -> nn.Module:
        c = self.config
        transformers = require_transformers()
        cls = architecture_class(transformers, c.architecture)
        if c.config_path is not None:
            config = transformers.AutoConfig.from_pretrained(c.config_path, local_files_only=True)
            for key, value in c.config.items():
                setattr(config, key, value)
        else:
            config = cls.config_class(**c.config)
        self._fill_from_data(config, info)
        weights = Path(c.weights) if c.weights else None
        if weights is not None and weights.is_dir():
            model = cls.from_pretrained(weights, config=config, local_files_only=True)
        else:
            model = cls(config)
            if weights is not None:
                if not weights.exists():
                    raise CompressorError(f"model weights {weights} do not exist")
                load_weights(model, weights)
        model.example_input_shape = info.input_shape
        return model  # type: ignore[no-any-return]

    def _fill_from_data(self, config: Any, info: DataInfo) -> None:
        given = set(self.config.config)
        if info.input_dtype == torch.int64 and "vocab_size" not in given:
            config.vocab_size = info.num_classes
            for token in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids past the end
                value = getattr(config, token, None)
                if token not in given and isinstance(value, int) and value >= info.num_classes:
                    setattr(config, token, None)
        if self.config.architecture.endswith("Classification") and "num_labels" not in given:
            config.num_labels = info.num_classes
        length = info.input_shape[-1] if info.input_shape else 0
        for field in POSITION_FIELDS:
            if hasattr(config, field) and field not in given and getattr(config, field) < length:
                setattr(config, field, length)


@hookimpl
def register_models(register: Callable[[type], None]) -> None:
    register(HFModel)
