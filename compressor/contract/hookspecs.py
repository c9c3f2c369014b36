"""Every hook a compressor plugin can implement.

This module is the plugin contract. A plugin is any module (or object) with functions decorated
by :data:`hookimpl` whose names match the specs below. Built-in methods are plugins too and use
nothing but these hooks and what :mod:`compressor.plugin_api` exports.

Two kinds of hook:

* ``register_*`` hooks *contribute types*. Each receives a ``register`` callable; call it once
  per class. The engine calls every implementation separately, so each registered type records
  the plugin (and distribution, version) that provided it. Duplicate names are errors naming
  both plugins. The engine instantiates these types from recipes and calls them directly: the
  training step never dispatches through pluggy per parameter.
* Observer hooks (``session_started``, ``step_finished``, ``session_finished``) are called by
  the engine at well-defined points with the :class:`~compressor.contract.context.CompressionContext`
  of the run; they may read it, never change what it trains. The run observers
  (``run_started``, ``metrics_logged``, ``run_finished``) are called by ``compressor run`` with
  a :class:`~compressor.contract.logger.RunInfo` (rank, configuration, run folder) and the
  metrics it logs, evaluations included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from compressor.contract.context import CompressionContext
    from compressor.contract.logger import Phase, RunInfo, Status

PROJECT = "compressor"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Mark a plugin function as the implementation of the hook with the same name."""

Register = Callable[[type], None]


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizer types: base optimizers and optimizer wrappers.

    :param register: call with a subclass of :class:`~compressor.plugin_api.OptimizerFactory`
        (selected in a recipe by ``optimizer: {name: ...}``) or of
        :class:`~compressor.plugin_api.OptimizerWrapper` (``wrapper: {name: ...}``, e.g. SAM).
    """


@hookspec
def register_operators(register: Register) -> None:
    """Register compression operators (mask builders and projections).

    :param register: call with a subclass of :class:`~compressor.plugin_api.Operator`; its
        ``Config`` has a ``kind: Literal[...]`` tag.
    """


@hookspec
def register_schedules(register: Register) -> None:
    """Register schedules: pure functions of the optimizer step (sparsity, rho, LR factor).

    :param register: call with a subclass of :class:`~compressor.plugin_api.Schedule`; its
        ``Config`` has a ``kind: Literal[...]`` tag.
    """


@hookspec
def register_modifiers(register: Register) -> None:
    """Register recipe modifiers (GMP, one-shot pruning, ADMM, ...).

    :param register: call with a subclass of :class:`~compressor.plugin_api.Modifier`; its
        ``Config`` has a ``type: Literal[...]`` tag.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register named model builders for ``compressor run``.

    :param register: call with a subclass of :class:`~compressor.plugin_api.ModelBuilder`.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register named dataset builders for ``compressor run``.

    :param register: call with a subclass of :class:`~compressor.plugin_api.DatasetBuilder`.
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Register tasks: what a batch means, the training loss and the reported metrics.

    :param register: call with a subclass of :class:`~compressor.plugin_api.Task`; its
        ``Config`` has a ``name: Literal[...]`` tag (``task: {name: ...}`` in a recipe).
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Register configurable evaluators, keyed by name under a recipe's ``evaluate:`` section.

    :param register: call with a subclass of :class:`~compressor.plugin_api.Evaluator`; its
        ``Config`` has a ``name: Literal[...]`` tag that is also its key in ``evaluate:``. What
        its :class:`~compressor.plugin_api.Evaluation` declares (metrics, table columns, curves,
        legend) is all that studies, tables and plots show of it.
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register export formats for ``compressor export RUN --format NAME``.

    :param register: call with a subclass of :class:`~compressor.plugin_api.Exporter`; its
        ``Config`` has a ``format: Literal[...]`` tag.
    """


@hookspec
def register_launchers(register: Register) -> None:
    """Register launchers: where ``compressor compare`` runs a study's trials.

    :param register: call with a subclass of :class:`~compressor.plugin_api.Launcher`; its
        ``Config`` has a ``name: Literal[...]`` tag (``compare --launcher NAME``, or a study's
        ``launcher: {name: ...}``). Built in: ``local`` (this machine, ``--jobs N`` worker
        processes) and ``submitit`` (Slurm, or submitit's local executor).
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register loggers, selected by a recipe's ``log: {to: [{name: ...}]}``.

    :param register: call with a subclass of :class:`~compressor.plugin_api.Logger`; its
        ``Config`` has a ``name: Literal[...]`` tag. The built-in loop builds and calls loggers
        on rank 0 only.
    """


@hookspec
def register_commands(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add sub-commands to the ``compressor`` command line.

    :param cli: the argparse sub-parsers object; call ``cli.add_parser(name, ...)`` and set
        ``func=callable(args) -> int`` (the exit code) with ``set_defaults``. Raise
        :class:`~compressor.plugin_api.CompressorError` for a clean one-line error. The
        command finds the plugin host it runs under as ``args.host`` (a
        :class:`~compressor.plugin_api.Host`: ``restore_run``, ``validate_config``, ...).
    """


@hookspec
def session_started(context: CompressionContext) -> None:
    """Called once a session is built, before the first step."""


@hookspec
def step_finished(context: CompressionContext, step: int, loss: float | None) -> None:
    """Called after every optimizer step, once masks and schedules are updated.

    :param step: the number of optimizer steps done so far (1 after the first step).
    :param loss: the closure's loss for that step, if the loop reported it.
    """


@hookspec
def session_finished(context: CompressionContext, report: dict[str, Any]) -> None:
    """Called when the session is finalised, with the run report (observers may read it)."""


@hookspec
def run_started(info: RunInfo) -> None:
    """Called by ``compressor run`` on every rank once the run is built (and, on a resume, its
    checkpoint loaded: ``info.resumed_at``), before the first step; ``info.rank`` says which
    process this is."""


@hookspec
def metrics_logged(info: RunInfo, step: int, metrics: dict[str, float], phase: Phase) -> None:
    """Called on rank 0 with every row of metrics the run logs, whether or not the recipe has
    a ``log:`` section.

    :param step: the optimizer step the metrics were measured at.
    :param metrics: name -> value; which names each phase has is in
        :mod:`compressor.contract.logger`.
    :param phase: ``"train"`` (every ``log.every`` steps), ``"test"`` (each evaluation) or
        ``"evaluate"`` (each evaluator's declared metrics, ``<evaluator>:<metric>``, at the end).
    """


@hookspec
def run_finished(
    info: RunInfo, status: Status, report: dict[str, Any] | None, error: str | None
) -> None:
    """Called by ``compressor run`` on every rank when the run ends, after its loggers closed.

    :param status: ``"done"`` or ``"failed"`` (an exception, a non-finite loss; it is re-raised
        after this hook).
    :param report: on rank 0 the run report (``report.json``), on the other ranks the short
        dict they return; None when the run failed.
    :param error: why it failed (one line), else None.
    """
