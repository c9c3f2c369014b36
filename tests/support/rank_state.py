"""A test plugin that saves, after the last step, this process's weights and masks to
``$COMPRESSOR_TEST_RANK_DIR/rank<RANK>.pt`` (loaded with ``compressor --plugin``), so a test
can compare what every data-parallel rank ended with."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from compressor.plugin_api import CompressionContext, hookimpl


@hookimpl
def step_finished(context: CompressionContext, step: int, loss: float | None) -> None:
    folder = os.environ.get("COMPRESSOR_TEST_RANK_DIR")
    if not folder or context.step != int(os.environ.get("COMPRESSOR_TEST_LAST_STEP", "-1")):
        return
    state = {
        "weights": {k: v.detach().clone() for k, v in context.model.state_dict().items()},
        "masks": {name: context.masks.get(name) for name in context.masks},
    }
    torch.save(state, Path(folder) / f"rank{os.environ.get('RANK', '0')}.pt")
