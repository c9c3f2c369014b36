"""log plugins: where a run's metrics go (``log: {to: [...]}`` in a recipe).

``tensorboard`` (event files through ``torch.utils.tensorboard``), ``csv`` (one long-format
file) and ``mlflow`` (``MlflowClient``, no global MLflow state). Each imports its package only
when used; :func:`require` names the extra to install when it is missing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from compressor.plugin_api import CompressorError, RunInfo


def require(module: str, *, who: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` or say which package, and which extra of compressor, provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CompressorError(
            f"the '{who}' logger needs the '{package}' package ({module} does not import: "
            f"{exc}): pip install 'compressor[{extra}]'"
        ) from None


def in_run(info: RunInfo, path: str) -> Path:
    """``path`` in the run folder, unless it is absolute."""
    return info.out_dir / Path(path).expanduser()
