"""A run's checkpoint: written atomically, resumed only by the recipe and world that wrote it.

``checkpoint.pt`` holds the model's weights, the session's state (step, masks, RNGs,
modifiers, optimizer), the evaluation history, the loss meter and the recipe. Data order is a
pure function of (seed, epoch), so a run resumed from it continues bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.contract.data import DataInfo
from compressor.contract.errors import CompressorError
from compressor.engine.session import Session
from compressor.kit.files import atomic_save, load_checkpoint
from compressor.recipe.schema import Recipe
from compressor.train.distributed import World, barrier
from compressor.train.meter import LossMeter

CHECKPOINT = "checkpoint.pt"


def resume_key(recipe: Recipe) -> dict[str, Any]:
    """What must match to resume: the recipe except ``train.max_steps`` (how far to go) and
    ``log:`` (where metrics go)."""
    data = recipe.identity()
    data["train"] = {k: v for k, v in data["train"].items() if k != "max_steps"}
    return data


def data_record(info: DataInfo, train_size: int) -> dict[str, Any]:
    """What the data told the model builder (a vocabulary size, a shape), as the checkpoint
    keeps it: a finished run is rebuilt from its folder even where the data has gone."""
    return {
        "input_shape": list(info.input_shape),
        "num_classes": int(info.num_classes),
        "input_dtype": str(info.input_dtype).removeprefix("torch."),
        "train_size": int(train_size),
    }


def data_from_record(record: dict[str, Any]) -> tuple[DataInfo, int]:
    """Inverse of :func:`data_record`."""
    dtype = getattr(torch, record["input_dtype"])
    info = DataInfo(tuple(record["input_shape"]), int(record["num_classes"]), dtype)
    return info, int(record["train_size"])


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights for ``train.init_from``: a state dict or a checkpoint holding one."""
    if not path.exists():
        raise CompressorError(f"train.init_from: {path} does not exist")
    state = load_checkpoint(path)
    return state["model"] if isinstance(state, dict) and "model" in state else state  # type: ignore[no-any-return]


class Checkpoint:
    """The checkpoint of the run in one folder, for one recipe and one world; ``data`` is the
    run's :func:`data_record`."""

    def __init__(
        self, out: Path, recipe: Recipe, world: World, data: dict[str, Any] | None = None
    ) -> None:
        self.path = out / CHECKPOINT
        self.recipe = recipe
        self.world = world
        self.data = data

    def start(
        self,
        model: nn.Module,
        session: Session,
        meter: LossMeter,
        *,
        resume: bool,
        init_from: Path | None,
    ) -> list[dict[str, Any]]:
        """Load the checkpoint when resuming from one (else ``init_from``'s weights, if any)
        into the model, session and meter; returns the evaluation history so far. Call it
        after ``session.optimizer()``: the optimizer's state is part of the session's."""
        if not (resume and self.path.exists()):
            if init_from is not None:
                model.load_state_dict(initial_weights(init_from))
            return []
        state = load_checkpoint(self.path)
        self._check(state)
        model.load_state_dict(state["model"])
        session.load_state_dict(state["session"])
        meter.load_state_dict(state.get("clocks", {}))
        # a row written where an earlier run stopped off the schedule is evaluated again
        return [row for row in state["history"] if not row.get("partial")]

    def _check(self, state: dict[str, Any]) -> None:
        if state["resume_key"] != resume_key(self.recipe):
            raise CompressorError(
                f"{self.path} was written by a different recipe; use another --out or drop --resume"
            )
        if state.get("world_size", 1) != self.world.size:
            raise CompressorError(
                f"{self.path} was written by {state.get('world_size', 1)} process(es) and "
                f"this run has {self.world.size}: the global batch, and so every step, would "
                "differ; resume with the same number of processes"
            )

    def save(
        self,
        model: nn.Module,
        session: Session,
        history: list[dict[str, Any]],
        meter: LossMeter,
    ) -> None:
        """Write the checkpoint (rank 0), atomically; every rank waits for it."""
        meter.check(session)  # a broken model is never written over a good checkpoint
        if self.world.main:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "session": session.state_dict(),
                    "history": history,
                    "resume_key": resume_key(self.recipe),
                    "recipe": self.recipe.to_dict(),
                    "data": self.data,
                    "clocks": meter.state_dict(),
                    "world_size": self.world.size,
                },
                self.path,
            )
        barrier(self.world)  # no rank runs ahead of a checkpoint it might resume from
