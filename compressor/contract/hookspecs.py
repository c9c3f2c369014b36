"""Every hook a compressor plugin can implement.

This module is the plugin contract. A plugin is any module (or object) with functions decorated
by :data:`compressor.hookimpl` whose names match the specs below. Built-in methods are plugins
too and use nothing but these hooks and the public classes in :mod:`compressor.contract.bases`.

Two kinds of hook:

* ``register_*`` hooks *contribute types*. Each receives a ``register`` callable; call it once
  per class. The engine calls every implementation separately, so each registered type records
  the plugin (and distribution, version) that provided it. Duplicate names are errors naming
  both plugins. The engine instantiates these types from recipes and calls them directly: the
  training step never dispatches through pluggy per parameter.
* Observer hooks (``session_started``, ``step_finished``, ``session_finished``), ``evaluate``
  and ``export`` are called by the engine at well-defined points.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from torch import nn

    from compressor.engine.session import Session

PROJECT = "compressor"
hookspec = pluggy.HookspecMarker(PROJECT)

Register = Callable[[type], None]


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizer types: base optimizers and optimizer wrappers.

    :param register: call with a subclass of :class:`compressor.interfaces.OptimizerFactory`
        (selected in a recipe by ``optimizer: {name: ...}``) or of
        :class:`compressor.interfaces.OptimizerWrapper` (``wrapper: {name: ...}``, e.g. SAM, CrAM).
    """


@hookspec
def register_operators(register: Register) -> None:
    """Register compression operators (mask builders and projections).

    :param register: call with a subclass of :class:`compressor.interfaces.Operator`; its
        ``Config`` has a ``kind: Literal[...]`` tag.
    """


@hookspec
def register_schedules(register: Register) -> None:
    """Register schedules: pure functions of the optimizer step (sparsity, rho, LR factor).

    :param register: call with a subclass of :class:`compressor.interfaces.Schedule`; its
        ``Config`` has a ``kind: Literal[...]`` tag.
    """


@hookspec
def register_modifiers(register: Register) -> None:
    """Register recipe modifiers (GMP, one-shot pruning, ADMM, ...).

    :param register: call with a subclass of :class:`compressor.interfaces.Modifier`; its
        ``Config`` has a ``type: Literal[...]`` tag.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register named model builders for ``compressor run``.

    :param register: call with a subclass of :class:`compressor.interfaces.ModelBuilder`.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register named dataset builders for ``compressor run``.

    :param register: call with a subclass of :class:`compressor.interfaces.DatasetBuilder`.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Register configurable evaluators, keyed by name under a recipe's ``evaluate:`` section.

    :param register: call with a subclass of :class:`compressor.interfaces.Evaluator`; its
        ``Config`` has a ``name: Literal[...]`` tag that is also its key in ``evaluate:``.
    """


@hookspec
def register_commands(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add sub-commands to the ``compressor`` command line.

    :param cli: the argparse sub-parsers object; call ``cli.add_parser(name, ...)`` and set
        ``func=callable(args) -> int`` with ``set_defaults``.
    """


@hookspec
def session_started(session: Session) -> None:
    """Called once a :class:`~compressor.session.Session` is built, before the first step."""


@hookspec
def step_finished(session: Session, step: int, loss: float | None) -> None:
    """Called after every optimizer step, once masks and schedules are updated.

    :param step: the number of optimizer steps done so far (1 after the first step).
    :param loss: the closure's loss for that step, if the loop reported it.
    """


@hookspec
def session_finished(session: Session, report: dict[str, Any]) -> None:
    """Called by :meth:`Session.finalize` with the run report (observers may read it)."""


@hookspec
def evaluate(session: Session, model: nn.Module) -> dict[str, Any] | None:
    """Return extra metrics for the run report; all results are merged.

    Two plugins returning the same key is an error naming the key.
    """


@hookspec(firstresult=True)
def export(session: Session | None, model: nn.Module, path: Path, format: str) -> Path | None:
    """Write ``model`` to ``path`` in ``format``; return the written path if handled.

    Stops at the first non-None result: the first plugin that handles ``format`` writes it.
    Return None for formats you do not handle.
    """
