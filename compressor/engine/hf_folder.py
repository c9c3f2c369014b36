"""A causal language model from a local Hugging Face folder, and the text -> token ids it reads.

The folder must hold ``config.json`` and ``*.safetensors`` weights; the model is loaded with
``AutoModelForCausalLM.from_pretrained(..., local_files_only=True)`` and the hub switched off,
so nothing is ever downloaded. Text is tokenized by the folder's tokenizer when it has one
(``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json`` or ``tokenizer.model``); without
one, a model whose vocabulary is byte-sized (256 to 259 ids: the bytes plus a few specials)
reads the text's UTF-8 bytes as ids. Every id must be below the model's ``vocab_size``.

It lives in the engine, not beside the ``hf`` model plugin, because ``compressor compress``
(the CLI) needs it and the core never imports the built-in plugins.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from compressor.contract.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
BYTE_VOCAB = range(256, 260)  # the 256 byte values, plus up to 3 special ids


def transformers_module() -> ModuleType:
    """``transformers`` with the hub switched off, or the one-line error naming the extra."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise InputError(
            "a Hugging Face folder needs the 'transformers' package: pip install 'compressor[hf]'"
        ) from None
    return transformers


def check_folder(folder: Path) -> None:
    """An :class:`InputError` unless ``folder`` holds a config and safetensors weights."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (a Hugging Face model folder is expected)")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} has no config.json: not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"{folder} has no weights (*.safetensors)")


def load_causal_lm(folder: str | Path) -> nn.Module:
    """The folder's causal LM, in eval mode, loaded offline."""
    folder = Path(folder)
    check_folder(folder)
    transformers = transformers_module()
    transformers.utils.logging.disable_progress_bar()  # errors stay one line on stderr
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: cannot load a causal language model: {exc}") from None
    return model.eval()  # type: ignore[no-any-return]


def vocab_size(model: nn.Module, default: int | None = None) -> int:
    """The number of token ids the model's input embedding takes (its config's
    ``vocab_size``, else ``default``)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if isinstance(embedding, nn.Embedding):
        return int(embedding.num_embeddings)
    config: Any = getattr(model, "config", None)
    value = getattr(config, "vocab_size", default)
    if value is None:
        raise InputError(f"cannot tell the vocabulary size of a {type(model).__name__}")
    return int(value)


def tokenizer_of(folder: str | Path, vocab: int) -> tuple[str, Callable[[str], torch.Tensor]]:
    """``(description, text -> 1-D int64 ids)`` for the folder (module doc for the rule)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = transformers_module().AutoTokenizer.from_pretrained(
            folder, local_files_only=True
        )

        def encode(text: str) -> torch.Tensor:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return torch.tensor(ids, dtype=torch.int64)

        return f"the folder's tokenizer ({type(tokenizer).__name__})", encode
    if vocab not in BYTE_VOCAB:
        raise InputError(
            f"{folder} has no tokenizer and its vocabulary ({vocab} ids) is not byte-sized "
            "(256-259): add the tokenizer files to the folder"
        )
    return "UTF-8 bytes (no tokenizer in the folder)", utf8_ids


def utf8_ids(text: str) -> torch.Tensor:
    """The text's UTF-8 bytes as int64 token ids (a byte-level model's tokenizer)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def check_ids(ids: torch.Tensor, vocab: int, what: str) -> None:
    """Token ids the model cannot embed are a tokenizer/model mismatch: an InputError."""
    if ids.numel() and int(ids.max()) >= vocab:
        raise InputError(
            f"{what} gives token id {int(ids.max())}, but the model has only {vocab} ids: "
            "the tokenizer does not match the model"
        )
