"""The plugin manager: built-ins, then entry points (group ``compressor``), then plugin files.

Environment switches:

* ``COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD=1`` — skip entry-point plugins (built-ins still load);
* ``COMPRESSOR_BLOCK_PLUGINS=a,b`` — never load the named plugins (built-ins included);
* ``COMPRESSOR_TRACE_HOOKS=1`` — print every hook call to stderr.

There is no process-wide plugin set: whoever needs plugins is handed a :class:`Plugins`
(the CLI loads one and passes it down), so two sets can live in one process.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

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
    modules: dict[str, PluginInfo] = field(default_factory=dict)
    """Module name -> the plugin it belongs to (to name the plugin a failure comes from)."""
    files: tuple[str, ...] = ()
    """The ``--plugin`` files loaded (absolute): a worker process loads the same ones."""

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    def has(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook through pluggy (its order, ``tryfirst``/``trylast``, wrappers,
        call monitoring); a failure names the plugin whose implementation raised and the hook."""
        caller = getattr(self.pm.hook, hook)
        try:
            caller(**kwargs)
        except (KeyboardInterrupt, PluginError):
            raise
        except Exception as exc:
            name = raised_in(exc, caller.get_hookimpls())
            if name is None and (blamed := self.blame(exc)) is not None:
                name = blamed[0].name
            name = name or "?"
            raise PluginError(
                f"{describe(self.infos.get(name), name)} failed in {hook}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def blame(self, exc: BaseException) -> tuple[PluginInfo, str] | None:
        """The plugin whose code raised ``exc`` (its innermost frame) and that function."""
        found = None
        tb = exc.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            for name, info in self.modules.items():
                if module == name or module.startswith(name + "."):
                    code = tb.tb_frame.f_code
                    where = getattr(code, "co_qualname", code.co_name).split(".<locals>")[0]
                    found = (info, where)
            tb = tb.tb_next
        return found

    def explain(self, exc: BaseException) -> str:
        """An unexpected exception in one line, naming the plugin whose code raised it."""
        blamed = self.blame(exc)
        where = f"{describe(blamed[0])} failed in {blamed[1]}: " if blamed else ""
        return f"{where}{type(exc).__name__}: {exc}"


def raised_in(exc: BaseException, impls: Sequence[pluggy.HookImpl]) -> str | None:
    """The plugin whose hook implementation ``exc`` went through last (its innermost frame of
    one of ``impls``): pluggy re-raises an implementation's exception unchanged."""
    codes = {getattr(impl.function, "__code__", None): impl.plugin_name for impl in impls}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found


def describe(info: PluginInfo | None, name: str = "?") -> str:
    """``plugin 'x' (distribution 1.0)`` for messages."""
    if info is None:
        return f"plugin '{name}'"
    return f"plugin '{info.name}' ({info.distribution} {info.version})"


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
    modules: dict[str, PluginInfo] = {}

    def add(plugin: object, info: PluginInfo) -> None:
        try:
            pm.register(plugin, name=info.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"{describe(info)} cannot be registered: {exc}") from None
        infos[info.name] = info
        module = getattr(plugin, "__name__", None)
        if isinstance(module, str):
            modules[module] = info

    for module_name in builtin_plugins():
        if module_name not in blocked:
            add(
                importlib.import_module(module_name),
                PluginInfo(module_name, "compressor", __version__),
            )

    if autoload is None:
        autoload = not os.environ.get("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in blocked or pm.get_plugin(entry.name) is not None:
                continue
            dist = entry.dist
            info = PluginInfo(
                entry.name, dist.metadata["name"] if dist else "?", dist.version if dist else "?"
            )
            add(_guarded_import(entry.load, describe(info)), info)

    for path in plugin_files:
        name = f"file:{Path(path).name}"
        if name not in blocked:
            add(_import_file(Path(path)), PluginInfo(name, str(path), "-"))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from None

    if os.environ.get("COMPRESSOR_TRACE_HOOKS"):
        trace_hooks(pm)

    files = tuple(str(Path(path).resolve()) for path in plugin_files)
    return Plugins(pm, infos, Registries.collect(pm, infos), modules, files)


def trace_hooks(pm: pluggy.PluginManager, write: Callable[[str], object] | None = None) -> None:
    """Print every hook call (and the plugins it reaches) to stderr through pluggy's hook-call
    monitoring, so registration, command and observer hooks all show."""
    out = write or sys.stderr.write

    def before(hook: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        out(f"hook {hook}: {', '.join(impl.plugin_name for impl in impls) or '-'}\n")

    def after(*_: Any) -> None:
        pass

    pm.add_hookcall_monitoring(before, after)


def _guarded_import(load: Any, who: str) -> Any:
    """Import a plugin; anything it raises (even ``sys.exit``) is a PluginError naming it."""
    try:
        return load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 — SystemExit at import must not end the CLI
        raise PluginError(f"{who} failed to import: {type(exc).__name__}: {exc}") from None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"plugin file not found: {path}")
    module_name = f"compressor_plugin_file_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    loader = spec.loader

    def execute() -> ModuleType:
        loader.exec_module(module)
        return module

    result: ModuleType = _guarded_import(execute, f"plugin file {path}")
    return result
