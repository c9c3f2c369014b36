"""The ``csv`` logger: one row per metric, ``step,epoch,phase,name,value``, in the run folder.

Long format, so the columns never change when an evaluator or a phase adds metrics; read it
with ``pandas.read_csv`` and pivot. Each row is flushed as it is written. A resumed run first
drops the rows after the step it resumed from (logged after the last checkpoint, logged again
now), so no step appears twice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from compressor.plugin_api import (
    Logger,
    Phase,
    RunInfo,
    Status,
    TypeConfig,
    atomic_write_text,
    hookimpl,
)
from compressor_plugins.log import in_run

HEADER = ["step", "epoch", "phase", "name", "value"]


class CsvLogger(Logger):
    class Config(TypeConfig):
        name: Literal["csv"] = "csv"
        file: str = Field("metrics.csv", description="relative to the run folder")

    def __init__(self, config: Any, info: RunInfo) -> None:
        super().__init__(config, info)
        self.path = in_run(info, config.file)
        kept: list[list[str]] = []
        if info.resumed_at and self.path.exists():
            with self.path.open(newline="") as handle:
                rows = list(csv.reader(handle))
            kept = [row for row in rows[1:] if row and int(row[0]) <= info.resumed_at]
        text = io.StringIO()
        csv.writer(text).writerows([HEADER, *kept])
        atomic_write_text(text.getvalue(), self.path)  # a fresh run starts a new file
        self.handle = self.path.open("a", newline="")
        self.writer = csv.writer(self.handle)

    def log(self, step: int, metrics: dict[str, float], phase: Phase) -> None:
        epoch = self.info.epoch_of(step)
        self.writer.writerows([step, epoch, phase, name, value] for name, value in metrics.items())
        self.handle.flush()

    def close(self, status: Status, error: str | None) -> None:
        self.handle.close()


@hookimpl
def register_loggers(register: Callable[[type], None]) -> None:
    register(CsvLogger)
