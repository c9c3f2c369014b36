"""Import paths of compressor 0.1, kept working for one release with a DeprecationWarning.

0.1 had a flat ``compressor/`` folder; plugins imported ``compressor.interfaces``,
``compressor.errors`` and friends. Those names now resolve to the module that holds the same
objects (``compressor.plugin_api`` for the plugin-facing ones) and warn once per name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "compressor.interfaces": "compressor.plugin_api",
    "compressor.errors": "compressor.contract.errors",
    "compressor.hookspecs": "compressor.contract.hookspecs",
    "compressor.selection": "compressor.kit.selection",
    "compressor.steps": "compressor.contract.steps",
    "compressor.optim": "compressor.contract.optim",
    "compressor.bn": "compressor.kit.bn",
    "compressor.checkpoint": "compressor.kit.files",
    "compressor.plugins": "compressor.host.manager",
    "compressor.registry": "compressor.host.registry",
    "compressor.source": "compressor.recipe.source",
    "compressor.session": "compressor.engine.session",
    "compressor.masks": "compressor.engine.masks",
    "compressor.loop": "compressor.train.loop",
    "compressor.metrics": "compressor.train.metrics",
    "compressor.progress": "compressor.train.progress",
    "compressor.compare": "compressor.study.runner",
    "compressor.store": "compressor.study.store",
    "compressor.report": "compressor.study.report",
}
"""Old module name -> the module that replaces it."""


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"'{spec.name}' is deprecated and goes away in compressor 0.3; "
            f"import from '{self.target}' instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
