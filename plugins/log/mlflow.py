"""The ``mlflow`` logger: one MLflow run per compressor run, through ``MlflowClient``.

No global MLflow state is touched (no ``mlflow.start_run``), so a study's runs, or a user's own
MLflow run around them, never interfere. Params are the recipe, flattened (``optimizer.lr``,
``modifiers.0.schedule.final``); metrics are ``<phase>/<metric>`` at their step; tags name the
recipe, its hash, the label and the run folder. A ``/`` inside a metric's name becomes ``.``
(``evaluate/oneshot:0.5.sparsity``): MLflow's file store keeps each metric as a file, so
``oneshot:0.5`` and ``oneshot:0.5/sparsity`` could not both exist. The MLflow run id is kept in the run folder
(``mlflow.json``), so a resumed run continues the same MLflow run; it ends ``FINISHED`` or
``FAILED`` (the error in the tag ``compressor.error``).

MLflow keeps every value logged: metrics an interrupted run logged after its last checkpoint
stay in the history beside the ones the resumed run logs for the same steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import Field

from compressor.plugin_api import (
    CompressorError,
    Logger,
    Phase,
    RunInfo,
    Status,
    TypeConfig,
    atomic_write_json,
    hookimpl,
)
from compressor_plugins.log import require

RUN_FILE = "mlflow.json"
MAX_PARAM_VALUE = 6000  # MLflow's limits
MAX_TAG_VALUE = 5000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def mlflow_module(part: str) -> Any:
    """``mlflow.<part>``, imported when first used (the ``mlflow`` extra)."""
    return require(f"mlflow.{part}", who="mlflow", package="mlflow-skinny", extra="mlflow")


class MlflowLogger(Logger):
    class Config(TypeConfig):
        name: Literal["mlflow"] = "mlflow"
        tracking_uri: str | None = Field(
            None,
            description="an MLflow server (http://...) or store; default: $MLFLOW_TRACKING_URI, "
            "else MLflow's own default",
        )
        experiment: str | None = Field(
            None, description="experiment name, created if missing; default: MLflow's Default"
        )

    @classmethod
    def check(cls, config: Any) -> None:
        mlflow_module("tracking")

    def __init__(self, config: Any, info: RunInfo) -> None:
        super().__init__(config, info)
        tracking = mlflow_module("tracking")
        self.entities = mlflow_module("entities")
        try:
            self.client = tracking.MlflowClient(tracking_uri=config.tracking_uri)
            self.run_id = self._continued() or self._created()
        except CompressorError:
            raise
        except Exception as exc:  # MlflowException, a store it cannot open, a server down
            where = config.tracking_uri or "MLflow's default tracking URI"
            raise CompressorError(
                f"the 'mlflow' logger cannot use {where}: {type(exc).__name__}: {exc} "
                "(docs/logging.md lists the stores mlflow-skinny can use)"
            ) from None

    def _continued(self) -> str | None:
        """The MLflow run an interrupted run folder was logging to, marked running again."""
        path = self.info.out_dir / RUN_FILE
        if not self.info.resumed_at or not path.exists():
            return None
        saved = json.loads(path.read_text())
        if saved.get("tracking_uri") != self.client.tracking_uri:
            return None
        run_id = str(saved["run_id"])
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _created(self) -> str:
        experiment_id = "0"  # MLflow's Default experiment
        if self.config.experiment:
            found = self.client.get_experiment_by_name(self.config.experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(self.config.experiment)
            )
        info = self.info
        tags = {
            "compressor.recipe": info.name,
            "compressor.recipe_hash": info.recipe_hash,
            "compressor.label": info.label,
            "compressor.run_dir": str(info.out_dir.resolve()),
            "compressor.world_size": str(info.world_size),
        }
        run = self.client.create_run(experiment_id, run_name=info.label, tags=tags)
        run_id = str(run.info.run_id)
        params = [
            self.entities.Param(key[:250], value[:MAX_PARAM_VALUE])
            for key, value in flatten(info.config)
        ]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i : i + PARAMS_PER_BATCH])
        atomic_write_json(
            {"run_id": run_id, "tracking_uri": self.client.tracking_uri},
            info.out_dir / RUN_FILE,
        )
        return run_id

    def log(self, step: int, metrics: dict[str, float], phase: Phase) -> None:
        now = int(time.time() * 1000)
        batch = [
            self.entities.Metric(f"{phase}/{name.replace('/', '.')}", value, now, step)
            for name, value in metrics.items()
        ]
        for i in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + METRICS_PER_BATCH])

    def close(self, status: Status, error: str | None) -> None:
        if error is not None:
            self.client.set_tag(self.run_id, "compressor.error", error[:MAX_TAG_VALUE])
        self.client.set_terminated(self.run_id, "FINISHED" if status == "done" else "FAILED")


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``{"a": {"b": [1, 2]}}`` -> ``("a.b.0", "1"), ("a.b.1", "2")``; empty lists and
    mappings are kept as ``[]`` / ``{}`` so every recipe key shows."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from flatten(item, f"{prefix}{key}.")
    elif isinstance(value, list | tuple) and value:
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), json.dumps(value) if not isinstance(value, str) else value


@hookimpl
def register_loggers(register: Callable[[type], None]) -> None:
    register(MlflowLogger)
