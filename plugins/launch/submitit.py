"""The ``submitit`` launcher: a study's trials as Slurm jobs (or submitit's local executor).

Each trial is one submitit job running the driver's ``work`` function on the pickled trial;
the driver polls the jobs and records each outcome as it arrives, so a job that fails or is
cancelled is one failed run and the rest of the study goes on. ``jobs`` caps how many are
queued at once. Paths in recipes (``init_from``) are relative to the directory the jobs start
in: submitit starts them in the submitting directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compressor.plugin_api import (
    CompressorError,
    Events,
    Launcher,
    LauncherConfig,
    Outcome,
    hookimpl,
)


class SubmititLauncher(Launcher):
    class Config(LauncherConfig):
        name: Literal["submitit"]
        cluster: Literal["slurm", "local", "debug"] | None = Field(
            None, description="None: Slurm where sbatch exists, else local (AutoExecutor)"
        )
        folder: str | None = Field(None, description="job logs (default <study>/submitit)")
        timeout_min: int = Field(60, gt=0, description="per trial")
        cpus_per_task: int | None = Field(None, ge=1, description="also the torch threads")
        gpus_per_node: int = Field(0, ge=0)
        mem_gb: float | None = Field(None, gt=0)
        slurm_partition: str | None = None
        parameters: dict[str, Any] = Field(
            default_factory=dict,
            description="anything else submitit's update_parameters takes (slurm_account, ...)",
        )
        poll_s: float = Field(1.0, gt=0, description="how often finished jobs are collected")

    def threads_per_job(self) -> int | None:
        return self.config.cpus_per_task  # type: ignore[no-any-return]

    def executor(self) -> Any:
        try:
            import submitit
        except ImportError:
            raise CompressorError(
                "the submitit launcher needs submitit: pip install 'compressor[submitit]'"
            ) from None
        folder = Path(self.config.folder) if self.config.folder else self.folder / "submitit"
        # no "%j" in the folder: submitit would also make an empty folder named "%j" in it;
        # its files are named after the job id anyway
        executor = submitit.AutoExecutor(folder=folder, cluster=self.config.cluster)
        parameters: dict[str, Any] = {
            "timeout_min": self.config.timeout_min,
            "gpus_per_node": self.config.gpus_per_node,
            "name": "compressor",
        }
        for key in ("cpus_per_task", "mem_gb", "slurm_partition"):
            if getattr(self.config, key) is not None:
                parameters[key] = getattr(self.config, key)
        executor.update_parameters(**parameters, **self.config.parameters)
        return executor

    def run(self, jobs: Sequence[Any], work: Callable[[Any], Outcome], events: Events) -> None:
        executor = self.executor()
        pending = list(jobs)
        running: list[tuple[Any, Any]] = []
        try:
            while pending or running:
                while pending and len(running) < int(self.config.jobs):
                    job = pending.pop(0)
                    submitted = executor.submit(work, job)
                    running.append((job, submitted))
                    events.started(job, f"submitit job {submitted.job_id}")
                finished = [(job, sub) for job, sub in running if sub.done()]
                for job, submitted in finished:
                    running.remove((job, submitted))
                    events.finished(job, self.outcome(submitted))
                if not finished:
                    time.sleep(float(self.config.poll_s))
        except BaseException:  # interrupted: cancel what is still queued or running
            for _, submitted in running:
                submitted.cancel(check=False)
            raise

    @staticmethod
    def outcome(submitted: Any) -> Outcome:
        try:
            result = submitted.result()
        except Exception as exc:  # the job itself failed (killed, timed out, cancelled)
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else type(exc).__name__
            return Outcome.failed(f"submitit job {submitted.job_id} failed: {reason}", str(exc))
        if not isinstance(result, Outcome):
            return Outcome.failed(f"submitit job {submitted.job_id} returned {result!r}")
        return result


@hookimpl
def register_launchers(register: Callable[[type], None]) -> None:
    register(SubmititLauncher)
