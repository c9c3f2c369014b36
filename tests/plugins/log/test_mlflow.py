"""The ``mlflow`` logger, read back through ``MlflowClient`` from a local file store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compressor.host.manager import Plugins
from compressor.train.loop import NonFiniteLoss, run
from tests.conftest import TINY_RECIPE, make_recipe

pytest.importorskip("mlflow.tracking", reason="needs the 'mlflow' extra")

RECIPE = TINY_RECIPE + (
    "modifiers:\n  - {type: gmp, schedule: {kind: linear, final: 0.5, end: 6}}\n"
    "evaluate:\n  oneshot: {sparsities: [0.5]}\n"
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # mlflow-skinny has no SQL store; MLflow 3 refuses its file store unless told otherwise
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file://{tmp_path / 'mlruns'}"


def logged(text: str, store: str) -> str:
    return (
        text
        + f"log: {{every: 2, to: [{{name: mlflow, tracking_uri: '{store}', experiment: exp}}]}}\n"
    )


def only_run(store: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("exp")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    return client, found


def steps(client: Any, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_a_run_is_one_mlflow_run_with_the_recipe_as_params(
    plugins: Plugins, tmp_path: Path, store: str
) -> None:
    out = tmp_path / "run"
    report = run(make_recipe(logged(RECIPE, store), plugins), out, plugins=plugins,
                 progress=False, label="GMP · seed 0")  # fmt: skip
    client, found = only_run(store)
    assert found.info.status == "FINISHED" and found.info.run_name == "GMP · seed 0"
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == found.info.run_id
    params = found.data.params
    assert params["optimizer.lr"] == "0.1" and params["train.seed"] == "0"
    assert params["modifiers.0.schedule.final"] == "0.5" and params["task"] == "null"
    assert found.data.tags["compressor.recipe_hash"] == report["recipe_hash"]
    run_id = found.info.run_id
    assert steps(client, run_id, "train/loss") == [2, 4, 6, 8]
    assert steps(client, run_id, "test/test_accuracy") == [4, 8]
    metrics = found.data.metrics  # the latest value of each
    assert metrics["test/test_accuracy"] == report["metrics"]["test_accuracy"]
    oneshot = report["evaluations"]["oneshot"]["metrics"]
    assert metrics["evaluate/oneshot:0.5"] == oneshot["0.5"]
    assert metrics["evaluate/oneshot:0.5.sparsity"] == oneshot["0.5/sparsity"]  # '/' is '.'


def test_a_resumed_run_continues_its_mlflow_run(
    plugins: Plugins, tmp_path: Path, store: str
) -> None:
    out = tmp_path / "run"
    for i, max_steps in enumerate((4, 8)):
        text = logged(RECIPE, store).replace("seed: 0,", f"seed: 0, max_steps: {max_steps},")
        run(make_recipe(text, plugins), out, plugins=plugins, resume=i > 0, progress=False)
    client, found = only_run(store)
    assert found.info.status == "FINISHED"
    assert steps(client, found.info.run_id, "train/loss") == [2, 4, 6, 8]


def test_a_failed_run_is_a_failed_mlflow_run_with_its_error(
    plugins: Plugins, tmp_path: Path, store: str
) -> None:
    diverging = logged(RECIPE.replace("lr: 0.1", "lr: 1.0e+30"), store)
    with pytest.raises(NonFiniteLoss) as info:
        run(make_recipe(diverging, plugins), tmp_path / "run", plugins=plugins, progress=False)
    _, found = only_run(store)
    assert found.info.status == "FAILED"
    assert found.data.tags["compressor.error"] == str(info.value)
