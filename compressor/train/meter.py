"""The training loss and clocks of a run, kept on the device and carried across resumes.

The loss is summed on the device step by step and read (one synchronisation) only where the
loop logs, evaluates or checkpoints, so a step never waits for the GPU. The first step whose
loss is not finite is remembered the same way. Training time is wall and process CPU time
inside the loop; a resumed run adds its own to what the checkpoint carried.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from compressor.contract.errors import CompressorError
from compressor.engine.session import Session
from compressor.train.distributed import World, check_same_masks, max_over_ranks, mean_over_ranks


class NonFiniteLoss(CompressorError):
    """The training loss stopped being a finite number: the run failed at ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(
            f"the training loss is not finite (NaN or infinite) at step {step}; the run stopped "
            "and the last checkpoint before it is intact (train.nonfinite: skip skips such steps)"
        )
        self.step = step


class LossMeter:
    """The loss since the last evaluation and since the last logged ``train`` row, the first
    non-finite step, and the training clocks. Reading a mean is a collective under data
    parallelism: every rank calls it at the same step."""

    def __init__(self, world: World, device: torch.device) -> None:
        self.world = world
        self.device = device
        self.train_s = 0.0  # carried from earlier runs of a resumed one
        self.train_cpu_s = 0.0
        self._loss: torch.Tensor | float = 0.0
        self._count = 0
        self._log_loss: torch.Tensor | float = 0.0
        self._log_count = 0
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.start()

    def start(self) -> None:
        """Start the clocks (the loop calls this just before its first step)."""
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def add(self, loss: torch.Tensor, step: int, logged: bool) -> None:
        """The loss of ``step`` (no synchronisation); ``logged``: also for the next row."""
        detached = loss.detach()
        self._first_bad = torch.where(
            (self._first_bad < 0) & ~torch.isfinite(detached), step + 1, self._first_bad
        )
        self._loss = self._loss + detached
        self._count += 1
        if logged:
            self._log_loss = self._log_loss + detached
            self._log_count += 1

    def check(self, session: Session) -> None:
        """Raise :class:`NonFiniteLoss` if a step's loss was not finite; under data parallelism
        also check that every rank holds the same masks. Synchronises: called at logging,
        evaluation and checkpoints, never per step."""
        bad = int(max_over_ranks(self.world, self._first_bad))
        if bad >= 0:
            raise NonFiniteLoss(bad)
        check_same_masks(self.world, session.masks.tensors(), session.step)

    def running(self) -> float:
        """This rank's mean loss since the last evaluation (for the progress bar)."""
        return float(self._loss) / max(self._count, 1)

    def evaluation_loss(self) -> float | None:
        """The loss since the last evaluation, averaged over the steps (and the ranks)."""
        return self._mean(self._loss, self._count)

    def reset_evaluation(self) -> None:
        self._loss, self._count = 0.0, 0

    def take_logged(self) -> float | None:
        """The loss since the last ``train`` row (mean over steps and ranks), then reset."""
        loss = self._mean(self._log_loss, self._log_count)
        self._log_loss, self._log_count = 0.0, 0
        return loss

    def _mean(self, total: torch.Tensor | float, count: int) -> float | None:
        if not count:
            return None
        summed = torch.as_tensor(total, dtype=torch.float64, device=self.device)
        return float(mean_over_ranks(self.world, summed)) / count

    def elapsed(self) -> dict[str, float]:
        """Training time so far, earlier runs of a resumed one included."""
        return {
            "train_s": self.train_s + time.perf_counter() - self._wall,
            "train_cpu_s": self.train_cpu_s + time.process_time() - self._cpu,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.elapsed(),
            "loss_sum": float(self._loss),
            "loss_count": self._count,
            "log_loss_sum": float(self._log_loss),
            "log_loss_count": self._log_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's ``clocks`` (older checkpoints may lack some keys)."""
        self.train_s = float(state.get("train_s", 0.0))
        self.train_cpu_s = float(state.get("train_cpu_s", 0.0))
        self._loss = float(state.get("loss_sum", 0.0))
        self._count = int(state.get("loss_count", 0))
        self._log_loss = float(state.get("log_loss_sum", 0.0))
        self._log_count = int(state.get("log_loss_count", 0))
