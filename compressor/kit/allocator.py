"""Keep freed activation memory for reuse under glibc's malloc, instead of faulting it in again.

A calibration pass allocates and frees some 100 MB of activations per batch (4–12 MB tensors).
glibc's default thresholds adapt to the largest block freed so far, but its trim threshold
follows at only twice that, so at the end of each forward the freed top of the heap goes back
to the kernel and the next forward faults every page in afresh: on the language-model bench
(BENCHMARKS.md "L") 1.7 million page faults, 18% of the compression time.

:func:`reuse_freed_memory` fixes the two thresholds at the ceiling glibc's own adaptive rule can
reach (mmap 32 MiB, trim twice that): blocks up to 32 MiB come from the heap, and up to 64 MiB
freed at its top stays mapped for the next batch. Peak memory is unchanged (freed blocks are
reused, not added). It does nothing where the process's allocator is not glibc's, or where the
user has tuned malloc already (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, or ``glibc.malloc.*`` in ``GLIBC_TUNABLES``), and
:func:`release_freed_memory` hands the free heap back afterwards.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "release_freed_memory", "reuse_freed_memory"]

MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: its own ceiling
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc's adaptive rule pairs with it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


def _user_tuned() -> bool:
    if any(name in os.environ for name in _USER_SETTINGS):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds as the module says; True when they were set.
    Idempotent; the thresholds stay set for the rest of the process."""
    libc = _glibc()
    if libc is None or _user_tuned():
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def release_freed_memory() -> None:
    """Return the heap's free memory to the kernel (``malloc_trim``); nothing off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
