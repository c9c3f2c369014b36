"""The ``compressor`` command line."""

from compressor.cli.main import main

__all__ = ["main"]
