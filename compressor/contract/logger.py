"""Loggers: where a run's metrics go (TensorBoard, CSV, MLflow, ...), configured under ``log:``.

The built-in loop calls loggers on rank 0 only, with three phases of metrics:

* ``train`` every ``log.every`` steps: ``loss`` (mean over the steps since the last ``train``
  row, and over the ranks), ``lr`` (the first parameter group's), ``sparsity`` (global);
* ``test`` at each evaluation: the task's ``test_*`` metrics, ``sparsity``, ``train_loss``;
* ``evaluate`` once training is done: every metric each evaluator declared, named
  ``<evaluator>:<metric>`` as in study stores.

A plugin that wants the metrics without a recipe entry (a W&B observer, say) implements the
observer hooks ``run_started`` / ``metrics_logged`` / ``run_finished`` instead; they receive
the same :class:`RunInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from compressor.contract.config import TypeConfig

Phase = Literal["train", "test", "evaluate"]
PHASES: tuple[Phase, ...] = ("train", "test", "evaluate")
Status = Literal["done", "failed"]


@dataclass(frozen=True)
class RunInfo:
    """What a logger or a run observer knows of the run: which one, where, on which rank."""

    name: str
    """The recipe's ``name``."""
    label: str
    """How the run is shown (a study's ``<label> · seed <n>``; else the recipe's name)."""
    out_dir: Path
    """The run folder (``checkpoint.pt``, ``report.json``); relative logger paths start here."""
    config: dict[str, Any] = field(default_factory=dict)
    """The validated recipe, defaults filled in (``Recipe.to_dict()``)."""
    recipe_hash: str = ""
    """``Recipe.hash()``: equal for recipes that give equal results (``log:`` not included)."""
    rank: int = 0
    world_size: int = 1
    resumed_at: int = 0
    """The step the run resumed from (0: a fresh run). Anything a logger holds for a later step
    was logged after the last checkpoint and will be logged again: drop it."""
    steps_per_epoch: int = 1
    last_step: int = 0
    """The step this run trains up to (``train.max_steps`` if that comes first)."""

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    def epoch_of(self, step: int) -> float:
        """Epochs done at ``step`` (4 decimals, as in the run's history)."""
        return round(step / self.steps_per_epoch, 4)


class Logger:
    """Receives a run's metrics on rank 0; its ``Config`` has a ``name: Literal[...]`` tag and
    is selected by ``log: {to: [{name: ...}]}``.

    Built once the run knows whether it resumes (``info.resumed_at``), before the first step,
    with the run folder ``info.out_dir`` created;
    ``close`` is called exactly once, also when the run fails (then ``status`` is
    ``"failed"`` and ``error`` says why) — the exception is re-raised after it.
    """

    TAG: ClassVar[str] = "name"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any, info: RunInfo) -> None:
        self.config = config
        self.info = info

    @classmethod
    def check(cls, config: Any) -> None:
        """Raise a CompressorError (e.g. the package it needs is not installed) without writing
        anything; ``compressor validate`` and every run call it before training."""

    def log(self, step: int, metrics: dict[str, float], phase: Phase) -> None:
        """Record ``metrics`` (name -> value) measured at optimizer step ``step``."""
        raise NotImplementedError

    def close(self, status: Status, error: str | None) -> None:
        """Flush and release what the logger holds; mark the run done or failed."""
