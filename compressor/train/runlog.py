"""A run's metrics, sent to the recipe's loggers (``log:``) and to the run observer hooks.

One :class:`RunLog` per ``compressor run``: it builds the loggers on rank 0 only, once the
run knows where it resumes from, hands every row of metrics to them and to
``metrics_logged`` (rank 0 only), and closes them exactly once — ``done`` with the report, or
``failed`` with the error before the exception goes on. ``run_started`` / ``run_finished`` are
called on every rank (``info.rank`` tells them apart).
"""

from __future__ import annotations

from typing import Any

from compressor.contract.errors import CompressorError
from compressor.contract.logger import Logger, Phase, RunInfo, Status
from compressor.host.manager import Plugins
from compressor.recipe.schema import Recipe


def check_loggers(recipe: Recipe, plugins: Plugins) -> None:
    """Each logger's ``check`` (its package installed?), as a located recipe error."""
    registry = plugins.registries.loggers
    for i, config in enumerate(recipe.config.log.to):
        logger: type[Logger] = registry.get(config.name).cls
        try:
            logger.check(config)
        except CompressorError as exc:
            raise recipe.error(("log", "to", i), str(exc)) from None


class RunLog:
    """The loggers of one run and the observers of its metrics."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self.info: RunInfo | None = None
        self.loggers: list[Logger] = []
        self.every = 0
        self.active = False
        """Whether anyone receives metrics; the same on every rank (the recipe and the plugins
        are), so every rank joins the collectives a ``train`` row needs, or none does."""
        self._started = False
        self._finished = False

    def open(self, recipe: Recipe, info: RunInfo) -> None:
        """Build the loggers (rank 0) and tell observers that the run starts."""
        section = recipe.config.log
        self.info = info
        self.every = section.every or recipe.config.train.log_every
        self.active = bool(section.to) or self.plugins.has("metrics_logged")
        if info.main and section.to:
            info.out_dir.mkdir(parents=True, exist_ok=True)  # loggers write into it at once
            for config in section.to:
                self.loggers.append(self.plugins.registries.loggers.build(config, info))
        self._started = True  # whoever is told that the run started is told that it ended
        self.plugins.notify("run_started", info=info)

    def due(self, step: int, last_step: int) -> bool:
        """Whether a ``train`` row is logged after ``step``."""
        return self.active and (step % self.every == 0 or step == last_step)

    def log(self, step: int, metrics: dict[str, float | None], phase: Phase) -> None:
        """One row of metrics (None values left out), to every logger and observer."""
        if self.info is None or not self.info.main or not self.active:
            return
        row = {name: float(value) for name, value in metrics.items() if value is not None}
        if not row:
            return
        for logger in self.loggers:
            logger.log(step, row, phase)
        self.plugins.notify("metrics_logged", info=self.info, step=step, metrics=row, phase=phase)

    def finish(self, report: dict[str, Any]) -> None:
        """The run is done: close every logger, then ``run_finished``. A logger that fails to
        close is raised once the others are closed."""
        self._close("done", report, None)

    def fail(self, exc: BaseException) -> None:
        """The run failed with ``exc`` (re-raised by the caller): close the loggers as failed;
        a logger failing to close then must not hide ``exc``, so it is only reported."""
        if isinstance(exc, KeyboardInterrupt):
            error = "interrupted (KeyboardInterrupt)"
        elif isinstance(exc, CompressorError):
            error = str(exc)
        else:
            error = self.plugins.explain(exc)
        try:
            self._close("failed", None, error)
        except Exception as close_error:  # noqa: BLE001 — reported, exc goes on
            from compressor.train.progress import console

            console.print(
                f"[yellow]while stopping the failed run: {self.plugins.explain(close_error)}",
                highlight=False,
            )

    def _close(self, status: Status, report: dict[str, Any] | None, error: str | None) -> None:
        if self._finished or self.info is None:
            return
        self._finished = True
        first: Exception | None = None
        for logger in self.loggers:
            try:
                logger.close(status, error)
            except Exception as exc:  # noqa: BLE001 — the others still close
                first = first or exc
        if self._started:
            self.plugins.notify(
                "run_finished", info=self.info, status=status, report=report, error=error
            )
        if first is not None:
            raise first
