"""The plugin manager: built-ins, then entry points (group ``compressor``), then plugin files.

Environment switches:

* ``COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD=1`` — skip entry-point plugins (built-ins still load);
* ``COMPRESSOR_BLOCK_PLUGINS=a,b`` — never load the named plugins (built-ins included);
* ``COMPRESSOR_TRACE_HOOKS=1`` — print every hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pluggy

from compressor._version import __version__
from compressor.contract import hookspecs
from compressor.contract.errors import PluginError
from compressor.host.registry import PluginInfo, Registries

ENTRY_POINT_GROUP = "compressor"

BUILTIN_PACKAGE = "compressor_plugins"
"""The package of built-in plugins; its ``PLUGINS`` tuple names their modules. The core loads
them by name like any plugin and never imports them itself."""


def builtin_plugins() -> tuple[str, ...]:
    """The built-in plugin modules, in registration order."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    return tuple(getattr(package, "PLUGINS", ()))


@dataclass
class Plugins:
    """A loaded plugin manager, what each plugin is, and the registries they filled."""

    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]
    registries: Registries

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook


def _blocked() -> set[str]:
    return {
        name.strip()
        for name in os.environ.get("COMPRESSOR_BLOCK_PLUGINS", "").split(",")
        if name.strip()
    }


def load_plugins(
    plugin_files: Sequence[str | Path] = (), *, autoload: bool | None = None
) -> Plugins:
    """Build a plugin manager with every plugin registered and the registries filled."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = _blocked()
    for name in blocked:
        pm.set_blocked(name)
    infos: dict[str, PluginInfo] = {}

    for module_name in builtin_plugins():
        if module_name in blocked:
            continue
        pm.register(importlib.import_module(module_name), name=module_name)
        infos[module_name] = PluginInfo(module_name, "compressor", __version__)

    if autoload is None:
        autoload = not os.environ.get("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party package must say who it is
            raise PluginError(f"loading entry-point plugins failed: {exc}") from exc
        for plugin, dist in pm.list_plugin_distinfo():
            plugin_name = pm.get_name(plugin)
            if plugin_name is not None:
                name = plugin_name
                infos[name] = PluginInfo(name, dist.metadata["name"], dist.version)

    for path in plugin_files:
        module = _import_file(Path(path))
        name = f"file:{Path(path).name}"
        if name in blocked:
            continue
        pm.register(module, name=name)
        infos[name] = PluginInfo(name, str(path), "-")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from None

    if os.environ.get("COMPRESSOR_TRACE_HOOKS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()

    return Plugins(pm, infos, Registries.collect(pm, infos))


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"plugin file not found: {path}")
    module_name = f"compressor_plugin_file_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PluginError(f"plugin file {path} failed to import: {exc}") from exc
    return module


_default: Plugins | None = None


def default_plugins() -> Plugins:
    """The process-wide plugins (built-ins + entry points), loaded on first use."""
    global _default
    if _default is None:
        _default = load_plugins()
    return _default


def use_plugins(plugins: Plugins) -> None:
    """Make ``plugins`` the process-wide set (the CLI does, so ``--plugin`` files count)."""
    global _default
    _default = plugins
