"""Text that is on every machine that runs compressor: a few of Python's standard-library
sources. The ``text`` dataset and ``compressor compress`` read it when given no text file, so
language-model recipes and commands run from a fresh clone with nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

# Modules of Python's standard library, in this order (about 0.5 MB of bytes).
STDLIB_TEXT = ("argparse.py", "dataclasses.py", "functools.py", "pathlib.py", "typing.py")


def stdlib_text() -> bytes:
    """The sources in :data:`STDLIB_TEXT`, joined by newlines."""
    folder = Path(os.__file__).parent
    return b"\n".join((folder / name).read_bytes() for name in STDLIB_TEXT)
