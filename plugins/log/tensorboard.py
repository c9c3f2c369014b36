"""The ``tensorboard`` logger: scalars ``<phase>/<metric>`` in event files under the run folder.

A resumed run opens its writer with ``purge_step`` just after the step it resumed from, so
TensorBoard hides whatever the interrupted run logged past its last checkpoint: no step shows
twice. The run's end (``done``, or ``failed: <error>``) is a text summary ``status``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from compressor.plugin_api import Logger, Phase, RunInfo, Status, TypeConfig, hookimpl
from compressor_plugins.log import in_run, require


def summary_writer() -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` (it needs the ``tensorboard`` package)."""
    module = require(
        "torch.utils.tensorboard", who="tensorboard", package="tensorboard", extra="tensorboard"
    )
    return module.SummaryWriter


class TensorBoardLogger(Logger):
    class Config(TypeConfig):
        name: Literal["tensorboard"] = "tensorboard"
        dir: str = Field("tensorboard", description="event file folder, relative to the run folder")

    @classmethod
    def check(cls, config: Any) -> None:
        summary_writer()

    def __init__(self, config: Any, info: RunInfo) -> None:
        super().__init__(config, info)
        self.folder = in_run(info, config.dir)
        # events at or after purge_step, written before, are discarded when TensorBoard reads
        # the folder: a fresh run hides an overwritten one, a resumed run its steps after the
        # checkpoint
        self.writer = summary_writer()(str(self.folder), purge_step=info.resumed_at + 1)
        self.step = info.resumed_at

    def log(self, step: int, metrics: dict[str, float], phase: Phase) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"{phase}/{name}", value, step)
        self.step = step

    def close(self, status: Status, error: str | None) -> None:
        self.writer.add_text("status", status if error is None else f"{status}: {error}", self.step)
        self.writer.close()


@hookimpl
def register_loggers(register: Callable[[type], None]) -> None:
    register(TensorBoardLogger)
