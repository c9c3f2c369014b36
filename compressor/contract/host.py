"""What a plugin may ask of the host that loaded it, handed to it explicitly.

There is no process-wide plugin host: two hosts (say, with different ``--plugin`` files) can
live in one process, so code that needs the registries is given the one it runs under. CLI
commands find it as ``args.host``; :func:`compressor.load_host` builds one in a script. The
built-in loop's ``compressor.train.host.RunHost`` implements this protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import BaseModel
    from torch import nn

    from compressor.contract.context import EvaluationContext
    from compressor.contract.data import DataInfo


class Host(Protocol):
    """The loaded plugins, as far as a plugin may use them."""

    def validate_config(self, config: type[BaseModel], data: Any, *, what: str = "options") -> Any:
        """Validate ``data`` against a plugin's ``Config`` outside a recipe (e.g. CLI options),
        with ``*Spec`` fields bound to every registered type; a clean CompressorError if wrong."""
        ...

    def build_model(self, spec: dict[str, Any], info: DataInfo) -> nn.Module:
        """Build a registered model from its recipe spec (``{"name": ..., ...}``) for ``info``."""
        ...

    def restore_run(self, run_dir: str | Path) -> EvaluationContext:
        """A finished run, rebuilt from its folder (recipe, weights, masks, data) for commands
        that evaluate or export it; its ``model`` holds the trained weights."""
        ...
