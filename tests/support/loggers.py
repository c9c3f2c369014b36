"""A test plugin (``compressor --plugin``): a logger ``record`` and the three run observers.

Every call appends one JSON line, with the calling process's rank, to
``$COMPRESSOR_TEST_LOG_DIR/rank<RANK>.jsonl``, so a test sees which process logged what.
``record`` takes ``fail_at: <step>``: it raises after recording that step (a run that crashes
after its last checkpoint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from compressor.plugin_api import Logger, Phase, RunInfo, Status, TypeConfig, hookimpl


def _record(event: str, **data: Any) -> None:
    folder = os.environ.get("COMPRESSOR_TEST_LOG_DIR")
    if folder:
        rank = os.environ.get("RANK", "0")
        with (Path(folder) / f"rank{rank}.jsonl").open("a") as handle:
            handle.write(json.dumps({"event": event, **data}) + "\n")


def _info(info: RunInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "label": info.label,
        "out_dir": str(info.out_dir),
        "recipe_name": info.config["name"],
        "recipe_hash": info.recipe_hash,
        "rank": info.rank,
        "world_size": info.world_size,
        "resumed_at": info.resumed_at,
        "last_step": info.last_step,
    }


class RecordLogger(Logger):
    class Config(TypeConfig):
        name: Literal["record"] = "record"
        fail_at: int | None = None

    def __init__(self, config: Any, info: RunInfo) -> None:
        super().__init__(config, info)
        _record("logger.init", **_info(info))

    def log(self, step: int, metrics: dict[str, float], phase: Phase) -> None:
        _record("logger.log", step=step, phase=phase, metrics=metrics)
        if step == self.config.fail_at:
            raise RuntimeError(f"record was told to fail at step {step}")

    def close(self, status: Status, error: str | None) -> None:
        _record("logger.close", status=status, error=error)


@hookimpl
def register_loggers(register: Callable[[type], None]) -> None:
    register(RecordLogger)


@hookimpl
def run_started(info: RunInfo) -> None:
    _record("run_started", **_info(info))


@hookimpl
def metrics_logged(info: RunInfo, step: int, metrics: dict[str, float], phase: Phase) -> None:
    _record("metrics_logged", rank=info.rank, step=step, phase=phase, metrics=metrics)


@hookimpl
def run_finished(
    info: RunInfo, status: Status, report: dict[str, Any] | None, error: str | None
) -> None:
    steps = None if report is None else report["steps"]
    _record("run_finished", rank=info.rank, status=status, error=error, steps=steps)


def events(folder: Path, rank: int = 0) -> list[dict[str, Any]]:
    """What ``rank`` recorded in ``folder`` (the value of ``$COMPRESSOR_TEST_LOG_DIR``)."""
    path = folder / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
