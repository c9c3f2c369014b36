"""Progress display: a rich progress bar on a terminal, plain log lines elsewhere (CI, pipes)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

console = Console(stderr=True)


class Progress:
    """``with Progress(name, total=...) as bar: bar.update(step, loss=...)``."""

    def __init__(
        self, description: str, *, total: int, start: int = 0, enabled: bool | None = None
    ) -> None:
        self.description = description
        self.total = total
        self.enabled = True if enabled is None else enabled
        self.rich = self.enabled and console.is_terminal
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._start = start

    def __enter__(self) -> Progress:
        if self.rich:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                self.description,
                total=self.total,
                completed=self._start,
                epoch=0.0,
                loss=float("nan"),
            )
        return self

    def update(self, step: int, **fields: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, **fields)

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(f"[dim]{self.description}[/dim] {message}")
        else:
            print(f"{self.description}: {message}", file=sys.stderr, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
