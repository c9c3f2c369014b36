"""Export formats: ``compressor export RUN --format NAME`` writes a finished run's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from compressor.contract.config import TypeConfig
from compressor.contract.context import EvaluationContext


class Exporter:
    """Writes a model in one format; its ``Config`` has a ``format: Literal[...]`` tag."""

    TAG: ClassVar[str] = "format"
    Config: ClassVar[type[TypeConfig]] = TypeConfig
    suffix: ClassVar[str] = ".pt"
    """The file ending ``compressor export`` uses when no ``--out`` is given."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        """Write ``model`` to ``path`` (atomically); return the path written."""
        raise NotImplementedError
