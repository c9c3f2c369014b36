"""Give torch.distributed's gloo threads time to let go of their last collectives at exit.

Why (issue 25; upstream: pytorch/pytorch#190489, the abandoned fix #179291): a gloo collective
(``AsyncWork``) keeps the thread-local state of the thread that launched it. DDP launches its
gradient all-reduce inside ``backward()``, where autograd has stashed a Python object (a
``contextvars.Context``) in that state. The work is released on gloo's worker thread, shortly
after it completes; if that is late (a busy machine) and the main thread has already begun
finalising the interpreter, releasing the Python object needs the GIL, the finalising interpreter
ends the worker thread, and its C++ destructor calls ``std::terminate``: ``terminate called
without an active exception``, SIGABRT, torchrun exit 1 — after the script has finished. A
user's loop that ends with ``dist.destroy_process_group()`` while the DDP wrapper is still alive
hit it 4 times in 50 launches (``bench/torchrun_stress.py``).

The guard: an exit handler (it runs before finalisation, while worker threads can still take
the GIL) that sleeps briefly, so a worker still holding a finished collective releases it then.
It does no collective (a rank that failed must not wait for the others at exit).
"""

from __future__ import annotations

import atexit
import time

import torch.distributed as dist

SETTLE_S = 0.05  # far above a scheduler period: a runnable worker thread gets the CPU by then


def settle_before_exit() -> None:
    """The exit handler: yield the CPU and the GIL to gloo's worker threads."""
    time.sleep(SETTLE_S)


def guard_distributed_exit() -> bool:
    """Register :func:`settle_before_exit` (once: a second call replaces the first), if this
    process is in a process group. Returns whether it is in one."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    atexit.unregister(settle_before_exit)
    atexit.register(settle_before_exit)
    return True
