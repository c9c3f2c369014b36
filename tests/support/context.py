"""A run context around a session and in-memory data, as the built-in loop builds one."""

from __future__ import annotations

from compressor.engine.session import Session
from compressor.plugin_api import DataSplits
from compressor.train.batches import LoaderSettings, batch_source
from compressor.train.context import RunContext
from compressor_plugins.zoo.tasks import Classification


def run_context(session: Session, data: DataSplits, eval_batch_size: int = 1024) -> RunContext:
    task = Classification(Classification.Config())
    batches = batch_source(data, LoaderSettings(batch_size=32, eval_batch_size=eval_batch_size), 0)
    return RunContext(session, task, batches, data_info=data.info)
