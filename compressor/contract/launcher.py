"""Launchers: where a study's trials run — this process, worker processes, a cluster.

The study driver hands a launcher the trials still to run and a ``work`` function; the
launcher runs ``work(job)`` for each wherever it likes (a thread of this process, a worker
process, a Slurm job) and reports every :class:`Outcome` back. The driver alone writes the
study's store, so a worker that dies loses only its own run. ``work`` and every job are
picklable (a module-level function, plain data), so any executor that pickles can run them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field

from compressor.contract.config import TypeConfig


class Job(Protocol):
    """What a launcher may read of a job; the rest is for ``work``."""

    @property
    def key(self) -> str:
        """``label/seed0``: unique in the study, for messages and log file names."""
        ...

    @property
    def threads(self) -> int | None:
        """Torch CPU threads the job will use (None: the process default)."""
        ...


@dataclass(frozen=True)
class Outcome:
    """How one job ended. ``report`` is the run's report when it is ``done``."""

    status: Literal["done", "failed"]
    report: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None

    @classmethod
    def failed(cls, error: str, traceback: str | None = None) -> Outcome:
        return cls("failed", None, error, traceback)


class Events(Protocol):
    """The driver's side: a launcher calls these as jobs start and end (in the driver)."""

    def started(self, job: Any, where: str) -> None: ...

    def finished(self, job: Any, outcome: Outcome) -> None: ...


class LauncherConfig(TypeConfig):
    """Every launcher has a ``name`` tag and ``jobs``: how many trials may run at once."""

    jobs: int = Field(1, ge=1, description="trials running at the same time")


class Launcher:
    """Runs a study's jobs; its ``Config`` has a ``name: Literal[...]`` tag.

    ``in_process`` launchers run ``work`` in the driver (progress bars stay live); the others
    run it elsewhere, so the driver shows one line per job started and finished.
    """

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = LauncherConfig
    default: ClassVar[bool] = False
    """What ``compare --jobs N`` uses when no launcher is named (the first so marked)."""

    def __init__(self, config: Any, folder: Path) -> None:
        self.config = config
        self.folder = folder
        """The study folder: a launcher may keep its logs under it."""

    @property
    def in_process(self) -> bool:
        return False

    def threads_per_job(self) -> int | None:
        """Torch CPU threads each job should use (None: leave the process default)."""
        return None

    def run(self, jobs: Sequence[Any], work: Callable[[Any], Outcome], events: Events) -> None:
        """Run ``work(job)`` for every job and call ``events.finished`` with each outcome."""
        raise NotImplementedError
