"""Data-parallel integration tests on CPU: forked processes joined as a torchrun world (gloo),
and a DDP communication hook that counts the all-reduces."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def run_forked(main: Callable[[int, Path], None], folder: Path, world: int = 2) -> list[Any]:
    """Run ``main(rank, folder)`` in ``world`` forked processes with torchrun's environment;
    each saves what it ended with to ``folder/rank<r>.pt``, returned in rank order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(main, port, world, folder), nprocs=world, start_method="fork")
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _rank(
    rank: int, main: Callable[[int, Path], None], port: int, world: int, folder: Path
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:  # accelerate caches the (one-process) state of the parent in singletons
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:
        pass
    else:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    main(rank, folder)


class CountingAllReduce:
    """Register ``counter.hook`` as a DDP comm hook (``ddp.register_comm_hook(None, ...)``): it
    all-reduces as DDP does and counts how often (once per bucket and synchronising pass)."""

    def __init__(self) -> None:
        self.count = 0

    def hook(self, state, bucket):  # type: ignore[no-untyped-def]  # DDP checks annotations
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.count += 1
        return allreduce_hook(state, bucket)
