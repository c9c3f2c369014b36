"""Datasets read from local files, never downloaded: ``tensors`` and ``text``.

* ``tensors`` — arrays from ``.pt`` (a dict with ``x``/``y``, or an ``(x, y)`` pair; loaded
  with ``weights_only``), ``.npz`` (arrays ``x`` and ``y``) or a pair of ``.npy`` files
  (``{x: inputs.npy, y: labels.npy}``); kept in memory (the fast path). Labels are class ids.
* ``text`` — one local text file (default: Python's standard-library sources) cut into
  blocks of ``block_size`` tokens for language modelling: bytes (ids 0–255, plus ``special_tokens`` free ids above them, e.g. for a mask
  token) by default, or a tokenizer from a local folder (``transformers``'s ``AutoTokenizer``,
  ``local_files_only``). The first ``1 - test_fraction`` of the tokens train, the rest test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from compressor.plugin_api import (
    CompressorError,
    Data,
    DataInfo,
    DatasetBuilder,
    DatasetConfig,
    DataSplits,
    hookimpl,
    stdlib_text,
)


class ArrayFiles(BaseModel):
    """Inputs and labels in two ``.npy`` files."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    x: str
    y: str


def _exists(path: Path, field: str) -> Path:
    if not path.is_file():
        raise CompressorError(
            f"data file {path} does not exist (nothing is downloaded; a relative path in a "
            f"recipe resolves against the recipe's folder): give yours with --set data.{field}=FILE"
        )
    return path


def load_arrays(
    source: str | ArrayFiles, x_key: str, y_key: str, resolve: Callable[[str], Path] = Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors from a ``.pt``/``.npz`` file or a pair of ``.npy`` files; ``resolve``
    makes a written path absolute and says which field it came from in errors."""
    if isinstance(source, ArrayFiles):
        return torch.from_numpy(np.load(resolve(source.x))), torch.from_numpy(
            np.load(resolve(source.y))
        )
    path = resolve(source)
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            missing = [k for k in (x_key, y_key) if k not in arrays]
            if missing:
                raise CompressorError(f"{path} has no array {missing[0]!r} (it has {list(arrays)})")
            return torch.from_numpy(arrays[x_key]), torch.from_numpy(arrays[y_key])
    if path.suffix in (".pt", ".pth"):
        data = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(data, dict) and x_key in data and y_key in data:
            return data[x_key], data[y_key]
        if isinstance(data, tuple | list) and len(data) == 2:
            return data[0], data[1]
        raise CompressorError(f"{path} holds neither {{{x_key!r}, {y_key!r}}} nor an (x, y) pair")
    raise CompressorError(f"{path}: expected a .pt, .npz or a pair of .npy files")


class Tensors(DatasetBuilder):
    class Config(DatasetConfig):
        name: Literal["tensors"]
        train: str | ArrayFiles
        test: str | ArrayFiles
        x_key: str = "x"
        y_key: str = "y"
        num_classes: int | None = Field(None, gt=1, description="default: largest label + 1")

    default_task = "classification"

    @cached_property
    def _splits(self) -> DataSplits:
        c = self.config
        x, y = load_arrays(c.train, c.x_key, c.y_key, self._resolver("train"))
        x_test, y_test = load_arrays(c.test, c.x_key, c.y_key, self._resolver("test"))
        if x.shape[1:] != x_test.shape[1:]:
            raise CompressorError(
                f"train inputs are {tuple(x.shape[1:])}, test inputs {tuple(x_test.shape[1:])}"
            )
        x, x_test = (
            x.float() if x.is_floating_point() else x,
            x_test.float() if x_test.is_floating_point() else x_test,
        )
        classes = c.num_classes or int(max(y.max(), y_test.max())) + 1
        info = DataInfo(tuple(x.shape[1:]), classes, x.dtype)
        return DataSplits(x, y.long(), x_test, y_test.long(), info)

    def _resolver(self, field: str) -> Callable[[str], Path]:
        return lambda value: _exists(self.local_path(value, field), field)

    def train_size(self) -> int:
        return int(self._splits.train_x.shape[0])

    def info(self) -> DataInfo:
        return self._splits.info

    def build(self) -> DataSplits:
        return self._splits


class Blocks(Dataset[torch.Tensor]):
    """Consecutive, non-overlapping blocks of ``length`` tokens."""

    def __init__(self, tokens: torch.Tensor, length: int) -> None:
        self.tokens = tokens
        self.length = length

    def __len__(self) -> int:
        return self.tokens.numel() // self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        start = index * self.length
        return self.tokens[start : start + self.length]


class Text(DatasetBuilder):
    class Config(DatasetConfig):
        name: Literal["text"]
        path: str | None = Field(
            None, description="a local text file; default: Python's own standard library sources"
        )
        block_size: int = Field(128, ge=2)
        test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
        tokenizer: str | None = Field(None, description="a local folder for AutoTokenizer")
        special_tokens: int = Field(0, ge=0, description="byte-level: free ids after 255")
        batch_size: int = Field(16, gt=0)
        eval_batch_size: int = Field(16, gt=0)

    default_task = "causal_lm"

    def where(self) -> str:
        """The corpus, for messages."""
        return "the standard-library text" if self.config.path is None else str(self.config.path)

    @cached_property
    def _tokens(self) -> tuple[torch.Tensor, int]:
        """All token ids of the file and the vocabulary size."""
        c = self.config
        raw = (
            stdlib_text()
            if c.path is None
            else _exists(self.local_path(c.path, "path"), "path").read_bytes()
        )
        if c.tokenizer is None:
            tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
            return tokens, 256 + c.special_tokens
        tokenizer = _tokenizer(c.tokenizer)
        ids = tokenizer(raw.decode("utf-8", errors="replace"), return_attention_mask=False)
        return torch.tensor(ids["input_ids"], dtype=torch.long), len(tokenizer)

    def _split(self) -> int:
        tokens, _ = self._tokens
        return int(tokens.numel() * (1 - self.config.test_fraction))

    def train_size(self) -> int:
        size = self._split() // self.config.block_size
        if size == 0:
            raise CompressorError(f"{self.where()} holds fewer tokens than one training block")
        return size

    def info(self) -> DataInfo:
        _, vocab = self._tokens
        return DataInfo((self.config.block_size,), vocab, torch.int64)

    def build(self) -> Data:
        tokens, _ = self._tokens
        split, length = self._split(), self.config.block_size
        test = Blocks(tokens[split:], length)
        if len(test) == 0:
            raise CompressorError(
                f"{self.where()}: the test part ({tokens.numel() - split} tokens) is shorter "
                f"than one block of {length}; raise test_fraction or lower block_size"
            )
        return Data(Blocks(tokens[:split], length), test, self.info(), random=False)


def _tokenizer(folder: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise CompressorError(
            "a tokenizer needs the 'transformers' package: pip install 'compressor[hf]'"
        ) from exc
    if not Path(folder).is_dir():
        raise CompressorError(f"tokenizer folder {folder} does not exist (nothing is downloaded)")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@hookimpl
def register_datasets(register: Callable[[type], None]) -> None:
    register(Tensors)
    register(Text)
