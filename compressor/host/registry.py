"""Typed registries filled by the ``register_*`` hooks, one per kind of recipe entry."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from compressor.contract.config import TypeConfig
from compressor.contract.data import DatasetBuilder, ModelBuilder
from compressor.contract.errors import PluginError, did_you_mean
from compressor.contract.evaluation import Evaluator
from compressor.contract.exporter import Exporter
from compressor.contract.launcher import Launcher
from compressor.contract.logger import Logger
from compressor.contract.modifier import Modifier
from compressor.contract.operator import Operator
from compressor.contract.optimizer import OptimizerFactory, OptimizerWrapper
from compressor.contract.schedule import Schedule
from compressor.contract.task import Task


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from, for ``compressor plugins`` and run reports."""

    name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    plugin: PluginInfo

    @property
    def config(self) -> type[TypeConfig]:
        return self.cls.Config  # type: ignore[no-any-return,attr-defined]


class Registry:
    """Named types of one kind (``operators``, ``modifiers``, ...), tagged by ``tag``."""

    def __init__(self, kind: str, base: type, noun: str) -> None:
        self.kind = kind
        self.base = base
        self.noun = noun  # "operator kind", for messages
        self.tag: str = base.TAG  # type: ignore[attr-defined]
        self._entries: dict[str, Entry] = {}

    def add(self, cls: type, plugin: PluginInfo) -> None:
        name = tag_value(cls, self.tag)
        if name in self._entries:
            other = self._entries[name].plugin.name
            raise PluginError(
                f"{self.noun} '{name}' is registered twice: by plugin '{other}' and by plugin '{plugin.name}'"
            )
        self._entries[name] = Entry(name, cls, plugin)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            hint = did_you_mean(name, self._entries)
            raise KeyError(f"unknown {self.noun} '{name}'{hint}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def build(self, config: Any, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the registered type whose config ``config`` is."""
        return self.get(getattr(config, self.tag)).cls(config, *args, **kwargs)


def tag_value(cls: type, tag: str) -> str:
    """The single Literal value of ``cls.Config``'s tag field."""
    config = getattr(cls, "Config", None)
    if config is None or tag not in getattr(config, "model_fields", {}):
        raise PluginError(f"{cls.__qualname__}.Config needs a '{tag}: Literal[...]' field")
    annotation = config.model_fields[tag].annotation
    values = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if len(values) != 1 or not isinstance(values[0], str):
        raise PluginError(f"{cls.__qualname__}.Config.{tag} must be Literal['<one name>']")
    return values[0]


class Registries:
    """All registries; ``Registries.collect(pm)`` fills them from the loaded plugins."""

    def __init__(self) -> None:
        self.optimizers = Registry("optimizers", OptimizerFactory, "optimizer")
        self.wrappers = Registry("wrappers", OptimizerWrapper, "optimizer wrapper")
        self.operators = Registry("operators", Operator, "operator kind")
        self.schedules = Registry("schedules", Schedule, "schedule kind")
        self.modifiers = Registry("modifiers", Modifier, "modifier type")
        self.models = Registry("models", ModelBuilder, "model")
        self.datasets = Registry("datasets", DatasetBuilder, "dataset")
        self.tasks = Registry("tasks", Task, "task")
        self.evaluators = Registry("evaluators", Evaluator, "evaluator")
        self.exporters = Registry("exporters", Exporter, "export format")
        self.launchers = Registry("launchers", Launcher, "launcher")
        self.loggers = Registry("loggers", Logger, "logger")
        self.plugins: list[PluginInfo] = []

    def all(self) -> list[Registry]:
        return [
            self.optimizers,
            self.wrappers,
            self.operators,
            self.schedules,
            self.modifiers,
            self.models,
            self.datasets,
            self.tasks,
            self.evaluators,
            self.exporters,
            self.launchers,
            self.loggers,
        ]

    def by_kind(self, kind: str) -> Registry:
        return next(r for r in self.all() if r.kind == kind)

    def provided_by(self, plugin: str) -> dict[str, list[str]]:
        """What one plugin registered, by registry kind."""
        out: dict[str, list[str]] = {}
        for registry in self.all():
            names = [e.name for e in registry if e.plugin.name == plugin]
            if names:
                out[registry.kind] = names
        return out

    @classmethod
    def collect(cls, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registries:
        """Call every ``register_*`` implementation separately, recording who registered what."""
        self = cls()
        self.plugins = list(infos.values())
        routes: dict[str, list[Registry]] = {
            "register_optimizers": [self.optimizers, self.wrappers],
            "register_operators": [self.operators],
            "register_schedules": [self.schedules],
            "register_modifiers": [self.modifiers],
            "register_models": [self.models],
            "register_datasets": [self.datasets],
            "register_tasks": [self.tasks],
            "register_evaluators": [self.evaluators],
            "register_exporters": [self.exporters],
            "register_launchers": [self.launchers],
            "register_loggers": [self.loggers],
        }
        for hook_name, registries in routes.items():
            impls = getattr(pm.hook, hook_name).get_hookimpls()
            # One call per plugin, each through pluggy (a subset hook caller holding that
            # plugin's implementation alone, so call monitoring and tracing see it): each gets
            # its own ``register`` so every entry records who provided it (as simonw/llm
            # does). Registration order, so a duplicate names the first-loaded plugin first.
            for impl in impls:
                info = infos[impl.plugin_name]
                others = [other.plugin for other in impls if other is not impl]
                call = pm.subset_hook_caller(hook_name, remove_plugins=others)

                def register(
                    obj: type, _info: PluginInfo = info, _regs: list[Registry] = registries
                ) -> None:
                    for registry in _regs:
                        if isinstance(obj, type) and issubclass(obj, registry.base):
                            registry.add(obj, _info)
                            return
                    kinds = " or ".join(r.base.__name__ for r in _regs)
                    raise PluginError(
                        f"plugin '{_info.name}' registered {obj!r}, which is not a {kinds}"
                    )

                try:
                    call(register=register)
                except (KeyboardInterrupt, PluginError):
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin '{info.name}' ({info.distribution} {info.version}) failed in "
                        f"{hook_name}: {type(exc).__name__}: {exc}"
                    ) from exc
        return self
