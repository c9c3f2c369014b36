"""The ``state_dict`` export format: the model's weights, loadable with ``weights_only=True``.

Masked weights are stored dense (zeros included): a mask alone does not make a file smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from torch import nn

from compressor.plugin_api import EvaluationContext, Exporter, TypeConfig, atomic_save, hookimpl


class StateDictExporter(Exporter):
    class Config(TypeConfig):
        format: Literal["state_dict"] = "state_dict"

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        atomic_save(model.state_dict(), path)
        return path


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(StateDictExporter)
