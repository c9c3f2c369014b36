"""Data parallelism for the built-in loop: ``torch.distributed`` (DDP), launched by ``torchrun``.

``compressor run`` under ``torchrun --nproc_per_node=N`` finds ``WORLD_SIZE``/``RANK`` in the
environment, joins the process group (gloo on CPU, nccl on CUDA) and wraps the model in
``DistributedDataParallel``. ``data.batch_size`` is per process, as in PyTorch: a step reads a
global batch of ``N × batch_size`` samples — the same one a single process with that batch
size reads — and every rank takes its slice. Compression stays identical on every rank: the
session's generator is seeded alike, masks are functions of weights DDP keeps equal, and after
every change of the masks their digest is compared across ranks (a clear error if they ever
differ). Only rank 0 evaluates and writes checkpoints, reports and studies.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from compressor.contract.errors import CompressorError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_environment() -> World:
    """The world ``torchrun`` describes in the environment (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(world: World, device: str) -> Iterator[None]:
    """Join the process group for the block (gloo on CPU, nccl on CUDA); leave it after."""
    if not world.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()  # a failed rank cannot wait for the others
        raise
    leave()


def leave() -> None:
    """Leave the process group in step with the other ranks, while the interpreter is whole.

    Rank 0 evaluates and writes the report after the others finish training; a rank that left
    then was tearing down (its gloo threads still holding the last collective's tensors, kept
    alive because DDP holds the group) while its peer still talked to it, and at interpreter
    exit those threads could need the GIL of a finalising interpreter: ``terminate called
    without an active exception`` (issue 25). So every rank waits for all (the last collective
    is a barrier, which holds no tensors), frees what still refers to the group (the DDP
    wrapper, its reducer, pending work) and only then destroys it."""
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def device_for(world: World, device: str) -> str:
    """``cuda`` means this rank's GPU under torchrun."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def digest(masks: Mapping[str, torch.Tensor]) -> str:
    """A hash of every mask (names and bits)."""
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode())
        h.update(masks[name].to(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def check_same_masks(world: World, masks: Mapping[str, torch.Tensor], step: int) -> None:
    """Compare the masks' digest across ranks; they must never differ."""
    if not world.distributed:
        return
    mine = digest(masks)
    seen: list[Any] = [None] * world.size
    dist.all_gather_object(seen, mine)
    if len(set(seen)) != 1:
        raise CompressorError(
            f"the masks differ between ranks after step {step} (digests {seen}); a compression "
            "step drew from something other than the session's generator or the synchronised "
            "weights"
        )


def max_over_ranks(world: World, value: torch.Tensor) -> torch.Tensor:
    """The largest of ``value`` over the ranks (an integer flag, e.g. the first bad step)."""
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def mean_over_ranks(world: World, value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the ranks (the training loss each rank saw on its slice)."""
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / world.size
    return value
