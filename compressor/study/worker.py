"""One trial as a self-contained job, and the function that runs it anywhere.

A :class:`TrialJob` is plain, picklable data: the trial's parsed recipe (with the positions
of its values, so a worker's errors are located like the driver's), its run folder and the
``--plugin`` files to load. :func:`run_job` runs it in whatever process a launcher chose and
returns an :class:`~compressor.contract.launcher.Outcome`; it never touches the study's store.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from compressor.contract.errors import CompressorError
from compressor.contract.launcher import Outcome
from compressor.host.manager import Plugins, load_plugins
from compressor.kit.files import load_checkpoint
from compressor.kit.threads import torch_threads
from compressor.recipe.schema import validate_source
from compressor.recipe.source import Source
from compressor.train.loop import CHECKPOINT, resume_key, run


@dataclass(frozen=True)
class TrialJob:
    key: str
    label: str
    seed: int
    position: int
    source: Source
    run_dir: str
    plugin_files: tuple[str, ...] = ()
    threads: int | None = None
    progress: bool = False

    @property
    def title(self) -> str:
        return f"{self.label} · seed {self.seed}"


def run_job(job: TrialJob, plugins: Plugins | None = None) -> Outcome:
    """Run one trial (resuming its own checkpoint if it has one); never raises for a failed
    run, so a launcher needs no knowledge of compressor's errors. ``plugins``: the driver's,
    when the job runs in the driver's process."""
    try:
        plugins = plugins or load_plugins(job.plugin_files)  # a worker: the job's own
        recipe = validate_source(job.source, plugins.registries)
        run_dir = Path(job.run_dir)
        checkpoint = run_dir / CHECKPOINT
        fresh = checkpoint.exists() and load_checkpoint(checkpoint).get("resume_key") != resume_key(
            recipe
        )
        with torch_threads(job.threads):
            report = run(
                recipe,
                run_dir,
                plugins=plugins,
                resume=not fresh,
                overwrite=fresh,
                progress=job.progress,
                label=job.title,
            )
        return Outcome("done", report)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one failing run must not stop the study
        if isinstance(exc, CompressorError):
            message = str(exc)
        elif plugins is not None:
            message = plugins.explain(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        return Outcome.failed(message, traceback.format_exc())
