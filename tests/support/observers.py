"""A test plugin implementing every observer hook: it appends one JSON line per call to the
file named by ``$COMPRESSOR_TEST_EVENTS`` (loaded with ``compressor --plugin``)."""

from __future__ import annotations

import json
import os
from typing import Any

from compressor.plugin_api import CompressionContext, hookimpl


def _record(event: str, **data: Any) -> None:
    path = os.environ.get("COMPRESSOR_TEST_EVENTS")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"event": event, **data}) + "\n")


@hookimpl
def session_started(context: CompressionContext) -> None:
    _record("session_started", step=context.step, total=context.clock.total_steps)


@hookimpl
def step_finished(context: CompressionContext, step: int, loss: float | None) -> None:
    _record("step_finished", step=step, loss=loss, sparsity=context.sparsity()["global"])


@hookimpl
def session_finished(context: CompressionContext, report: dict[str, Any]) -> None:
    _record("session_finished", step=context.step, steps=report["steps"])
