"""Optional packages: import one, or say which extra of compressor installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from compressor.contract.errors import InputError


def require_package(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module``; missing, an :class:`InputError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f"{purpose} needs" if purpose else "this needs"
        raise InputError(
            f"{what} the '{module.split('.')[0]}' package: pip install 'compressor[{extra}]'"
        ) from exc
