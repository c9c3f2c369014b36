"""Atomic files: write to a temporary file in the same folder, fsync, then rename.

A crash mid-write leaves the previous checkpoint or report intact (a temporary file a kill
left behind is removed by the next write of the same file). Files get the usual permissions
(``0666`` less the umask), not the ``0600`` of temporary files. Reading a checkpoint loads
tensors and plain data only: nothing pickled is ever run, and a truncated, empty or foreign
file is one clear error naming it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from compressor.contract.errors import CompressorError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, write: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CompressorError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CompressorError(
                f"cannot write {path}: {exc.strerror or exc}; the previous file is intact"
            ) from None
        raise


@contextmanager
def staged(target: str | Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``target`` to write into; when the block succeeds, each of
    its entries replaces the one of the same name beside ``target`` (a file or a folder), and
    when it fails nothing outside the staging folder has changed and the folder is removed."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stage", dir=target.parent)
        )
    except OSError as exc:
        raise CompressorError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        yield stage
        for entry in sorted(stage.iterdir()):
            dest = target.parent / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Strict JSON (non-finite numbers become null), written atomically."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    _atomic_write(Path(path), lambda handle: handle.write((text + "\n").encode()))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Replace ``path`` with ``text`` (UTF-8) at once: a reader sees the old or the new file."""
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`atomic_save` (tensors and plain data only)."""
    path = Path(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CompressorError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CompressorError(f"{path} is a folder, not a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise CompressorError(
                f"{path} holds Python objects besides tensors and plain data; compressor loads "
                "only those, so nothing pickled can run"
            ) from None
        raise CompressorError(f"{path} is not a readable checkpoint ({exc})") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = "empty" if path.stat().st_size == 0 else "truncated or not a torch checkpoint"
        detail = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise CompressorError(f"{path} is not a readable checkpoint: {reason} ({detail})") from None
