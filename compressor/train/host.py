"""The plugin host a plugin is handed (the ``Host`` protocol), over one set of loaded plugins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

from compressor.contract.data import DataInfo
from compressor.contract.errors import CompressorError
from compressor.host.manager import Plugins, load_plugins
from compressor.recipe.schema import resolved_config
from compressor.train.context import RunContext
from compressor.train.restore import restore_run


@dataclass(frozen=True)
class RunHost:
    """What a plugin may ask of ``plugins``: validate a config, build a model, restore a run."""

    plugins: Plugins

    def validate_config(self, config: type[BaseModel], data: Any, *, what: str = "options") -> Any:
        schema = resolved_config(self.plugins.registries, config)
        try:
            return schema.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise CompressorError(f"bad {what}: {problems}") from None

    def build_model(self, spec: dict[str, Any], info: DataInfo) -> nn.Module:
        try:
            entry = self.plugins.registries.models.get(str(spec.get("name")))
        except KeyError as exc:
            raise CompressorError(str(exc.args[0])) from None
        config = self.validate_config(entry.config, spec, what="model spec")
        return entry.cls(config).build(info)  # type: ignore[no-any-return]

    def restore_run(self, run_dir: str | Path) -> RunContext:
        return restore_run(run_dir, self.plugins)


def load_host(plugin_files: Sequence[str | Path] = (), *, autoload: bool | None = None) -> RunHost:
    """A host over freshly loaded plugins (built-ins, entry points, ``plugin_files``)."""
    return RunHost(load_plugins(plugin_files, autoload=autoload))
