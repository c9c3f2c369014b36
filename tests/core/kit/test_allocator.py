"""compressor.kit.allocator: freed activations stay mapped under glibc (no fresh page faults)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from compressor.kit.allocator import release_freed_memory, reuse_freed_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc malloc's",
)

# A forward's pattern: six 8 MiB activations allocated, touched, then freed together, ten
# times over; and blocks of a growing size (1..20 MiB), each freed before the next.
CHURN = """
import resource, sys, torch
from compressor.kit.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def churn():
    held = [torch.empty(2**21).fill_(1.0) for _ in range(6)]
    del held
if sys.argv[2] == "churn":
    churn(); churn()
    before = faults()
    for _ in range(10):
        churn()
else:
    before = faults()
    for mib in range(1, 21):
        torch.empty(mib * 2**18).fill_(1.0)
print(applied, faults() - before)
"""
ONE_CHURN = 6 * 2048  # pages of 4 KiB


def _faults(mode: str, pattern: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode, pattern],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@glibc_only
def test_freed_activations_are_reused_not_faulted_in_again() -> None:
    # glibc's default trims the freed top of the heap whenever it can, so the default's count
    # depends on the address layout (ten churns' pages, or none); with the thresholds set,
    # ten churns never fault one churn's pages.
    applied, reused = _faults("on", "churn")
    assert applied
    assert reused < ONE_CHURN


@glibc_only
def test_blocks_up_to_32_mib_come_from_the_heap() -> None:
    _, mapped = _faults("off", "grow")  # each larger block a fresh mapping: 210 MiB of pages
    _, heap = _faults("on", "grow")
    assert mapped > 200 * 256
    assert heap * 3 < mapped


@glibc_only
def test_a_users_own_malloc_settings_are_left_alone() -> None:
    applied, _ = _faults("on", "churn", MALLOC_TRIM_THRESHOLD_=str(2**20))
    assert not applied
    applied, _ = _faults("on", "churn", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert not applied


def test_calls_are_safe_anywhere() -> None:
    reuse_freed_memory()
    reuse_freed_memory()  # idempotent
    release_freed_memory()
