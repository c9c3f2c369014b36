"""Export formats: ``compressor export RUN --format NAME`` writes a finished run's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from compressor.contract.config import TypeConfig
from compressor.contract.context import EvaluationContext


class Exporter:
    """Writes a model in one format; its ``Config`` has a ``format: Literal[...]`` tag.

    ``compressor export`` imports every ``requires`` module (a missing one names its extra),
    calls :meth:`check` before anything is written, and has :meth:`export` write into a
    staging folder that is renamed into place only when the export succeeded.
    """

    TAG: ClassVar[str] = "format"
    Config: ClassVar[type[TypeConfig]] = TypeConfig
    suffix: ClassVar[str] = ".pt"
    """The ending ``compressor export`` uses when no ``--out`` is given ("" for a folder)."""
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    """``(module, extra)`` pairs the format needs: ``("safetensors", "sparse")``."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def check(self, context: EvaluationContext, model: nn.Module) -> None:
        """Raise ``InputError`` when ``model`` cannot be exported in this format (cheap)."""

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        """Write ``model`` to ``path`` (atomically); return the path written."""
        raise NotImplementedError

    def summary(self) -> list[str]:
        """Lines saying what the last :meth:`export` changed (``parameters 1,000 → 500``),
        which ``compressor export`` prints under the path; none by default."""
        return []
