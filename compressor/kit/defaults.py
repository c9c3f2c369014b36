"""Defaults the built-in plugins share, so every family picks the same one."""

from __future__ import annotations

from typing import Any


def default_operator() -> dict[str, Any]:
    """The operator every built-in uses unless told otherwise: global magnitude top-k."""
    return {"kind": "magnitude", "scope": "global"}
