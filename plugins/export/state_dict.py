"""The ``state_dict`` export format: the model's weights, loadable with ``weights_only=True``.

Masked weights are stored dense (zeros included): a mask alone does not make a file smaller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from compressor import hookimpl
from compressor.train.checkpoint import atomic_save


@hookimpl
def export(session: Any, model: nn.Module, path: Path, format: str) -> Path | None:
    if format != "state_dict":
        return None
    atomic_save(model.state_dict(), path)
    return path
