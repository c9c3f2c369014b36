"""The ``local`` launcher: a study's trials on this machine, ``jobs`` at a time.

``jobs: 1`` (the default) runs every trial in the driver's process, one after another, with
live progress. ``jobs: N`` starts N worker processes (forked from a clean ``forkserver``,
never from the driver, so no thread pool is inherited) with the machine's CPUs split between
them; each runs one trial at a time, as the driver sends them, and sends its outcome back
through a pipe. A worker that dies (kill -9, out of memory) is reported failed with its
signal, loses only its run, and is replaced.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from pydantic import Field

from compressor.plugin_api import Events, Launcher, LauncherConfig, Outcome, hookimpl


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code} without reporting"


def _serve(work: Callable[[Any], Outcome], pipe: Connection) -> None:
    """A worker: run the jobs the driver sends until it sends None."""
    while (job := pipe.recv()) is not None:
        pipe.send(work(job))


@dataclass
class _Worker:
    process: Any
    pipe: Connection
    job: Any = None

    def died(self) -> Outcome:
        self.process.join()
        return Outcome.failed(
            f"the worker process (pid {self.process.pid}) {exit_reason(self.process.exitcode)}; "
            "its run folder and last checkpoint are kept: compare again to resume it"
        )


class LocalLauncher(Launcher):
    default = True  # compare --jobs N, no launcher named

    class Config(LauncherConfig):
        name: Literal["local"]
        threads: int | None = Field(
            None, ge=1, description="torch CPU threads per worker (default: the CPUs / jobs)"
        )

    @property
    def in_process(self) -> bool:
        return int(self.config.jobs) == 1

    def threads_per_job(self) -> int | None:
        if self.config.threads is not None or self.in_process:
            return self.config.threads  # None in process: what --threads set
        return max(1, available_cpus() // int(self.config.jobs))

    def run(self, jobs: Sequence[Any], work: Callable[[Any], Outcome], events: Events) -> None:
        if self.in_process:
            for job in jobs:
                events.started(job, "in this process")
                events.finished(job, work(job))
            return
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([work.__module__])  # imported once, not per worker
        pending = list(jobs)
        workers: list[_Worker] = []

        def start_worker() -> None:
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(work, theirs))
            process.start()
            theirs.close()
            workers.append(_Worker(process, mine))

        def give_work(worker: _Worker) -> None:
            if not pending:
                worker.pipe.send(None)
                return
            job = pending.pop(0)
            try:
                worker.pipe.send(job)
            except OSError:  # it died while idle: the job never started, run it elsewhere
                pending.insert(0, job)
                return
            worker.job = job
            events.started(job, f"worker pid {worker.process.pid}")

        try:
            for _ in range(min(int(self.config.jobs), len(pending))):
                start_worker()
            for worker in list(workers):
                give_work(worker)
            while any(worker.job is not None for worker in workers) or pending:
                handles: list[Any] = [w.pipe for w in workers if w.job is not None]
                ready = wait(handles + [w.process.sentinel for w in workers])
                for worker in list(workers):
                    if worker.job is not None and worker.pipe in ready:
                        try:
                            outcome: Outcome = worker.pipe.recv()
                        except (EOFError, OSError):
                            outcome = worker.died()
                        job, worker.job = worker.job, None
                        events.finished(job, outcome)
                        give_work(worker)
                    if worker.process.sentinel in ready:
                        if worker.job is not None:
                            job, worker.job = worker.job, None
                            events.finished(job, worker.died())
                        workers.remove(worker)
                        worker.process.join()
                        if pending and len(workers) < int(self.config.jobs):
                            start_worker()
                            give_work(workers[-1])
        finally:  # done or interrupted: stop the workers (an interrupted run keeps its checkpoint)
            for worker in workers:
                if worker.job is not None:
                    worker.process.terminate()
                else:
                    with contextlib.suppress(OSError):
                        worker.pipe.send(None)
            for worker in workers:
                worker.process.join()


@hookimpl
def register_launchers(register: Callable[[type], None]) -> None:
    register(LocalLauncher)
