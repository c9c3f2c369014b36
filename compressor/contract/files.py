"""Atomic files: write to a temporary file in the same folder, fsync, then rename.

A crash mid-write leaves the previous checkpoint or report intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`atomic_save` (tensors and plain data only)."""
    return torch.load(Path(path), weights_only=True, map_location="cpu")
