"""Logging (issue 13): the ``log:`` section, the ``register_loggers`` hook and the run observers.

A logger and the observers from a plugin file (``tests/support/loggers.py``) record every call,
with the rank that made it; the built-in loggers have their own tests in ``tests/plugins/log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from compressor.contract.errors import CompressorError, RecipeError
from compressor.host.manager import Plugins, load_plugins
from compressor.train.loop import NonFiniteLoss, resume_key, run
from tests.conftest import TINY_RECIPE, make_recipe
from tests.support import ROOT
from tests.support.loggers import events

LOGGERS = ROOT / "tests" / "support" / "loggers.py"

# 64 samples in batches of 16: 4 steps an epoch, 8 in all; GMP reaches 0.5 at step 6
RECIPE = TINY_RECIPE + (
    "modifiers:\n  - {type: gmp, schedule: {kind: linear, final: 0.5, end: 6}}\n"
    "evaluate:\n  oneshot: {sparsities: [0.5]}\n"
)
RECORD = "log: {every: 3, to: [{name: record}]}\n"


@pytest.fixture(scope="module")
def with_record() -> Plugins:
    return load_plugins([LOGGERS], autoload=False)


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "events"
    folder.mkdir()
    monkeypatch.setenv("COMPRESSOR_TEST_LOG_DIR", str(folder))
    return folder


def rows(recorded: list[dict[str, Any]], event: str = "logger.log") -> list[tuple[int, str]]:
    return [(e["step"], e["phase"]) for e in recorded if e["event"] == event]


def test_the_log_section_changes_neither_the_hash_nor_the_resume_key(plugins: Plugins) -> None:
    plain = make_recipe(TINY_RECIPE, plugins)
    logged = make_recipe(
        TINY_RECIPE + "log: {every: 5, to: [{name: csv}, {name: tensorboard, dir: tb}]}\n",
        plugins,
    )
    assert logged.to_dict()["log"]["every"] == 5  # the section is there ...
    assert logged.hash() == plain.hash()  # ... and changes nothing a study keys on
    assert resume_key(logged) == resume_key(plain)
    assert "log" not in resume_key(plain)
    # pinned: a change of the digest re-runs every stored study run. Evaluators a recipe leaves
    # unset do not count (the `deployment` evaluator's arrival changed every hash once; the
    # next plugin's will not)
    assert plain.hash() == "9888bb534a104f1073e7928fb7ac9c13dc70d26a625248deb812b25f3256761b"
    assert None not in plain.identity()["evaluate"].values()
    assert make_recipe(TINY_RECIPE.replace("lr: 0.1", "lr: 0.2"), plugins).hash() != plain.hash()


def test_an_unknown_logger_is_a_located_error_with_a_suggestion(plugins: Plugins) -> None:
    with pytest.raises(RecipeError) as info:
        make_recipe(TINY_RECIPE + "log:\n  to:\n    - {name: tensorbord}\n", plugins)
    assert str(info.value) == (
        "test.yaml:9:14: log.to[0].name: unknown logger 'tensorbord' (did you mean "
        "'tensorboard'?); known: csv, mlflow, tensorboard"
    )
    with pytest.raises(RecipeError, match=r"log.every: Input should be greater than 0"):
        make_recipe(TINY_RECIPE + "log: {every: 0}\n", plugins)


def test_a_plugin_logger_and_the_observers_receive_every_phase(
    with_record: Plugins, tmp_path: Path, log_dir: Path
) -> None:
    recipe = make_recipe(RECIPE + RECORD, with_record)
    report = run(recipe, tmp_path / "run", plugins=with_record, progress=False, label="lbl")
    recorded = events(log_dir)
    assert [e["event"] for e in recorded[:2]] == ["logger.init", "run_started"]
    assert recorded[1] == {
        "event": "run_started", "name": "tiny", "label": "lbl", "out_dir": str(tmp_path / "run"),
        "recipe_name": "tiny", "recipe_hash": report["recipe_hash"], "rank": 0, "world_size": 1,
        "resumed_at": 0, "last_step": 8,
    }  # fmt: skip
    # train rows every 3 steps and at the end, a test row per epoch, the evaluators at the end
    expected = [(3, "train"), (4, "test"), (6, "train"), (8, "train"), (8, "test"),
                (8, "evaluate")]  # fmt: skip
    assert rows(recorded) == expected
    assert rows(recorded, "metrics_logged") == expected
    logged = [e["metrics"] for e in recorded if e["event"] == "logger.log"]
    observed = [e["metrics"] for e in recorded if e["event"] == "metrics_logged"]
    assert logged == observed
    train, test = logged[0], logged[1]
    assert set(train) == {"loss", "lr", "sparsity"} and train["lr"] == pytest.approx(0.1)
    assert logged[2]["sparsity"] == pytest.approx(0.5, abs=0.01)
    first = report["history"][0]
    assert test == {k: v for k, v in first.items() if k not in ("step", "epoch")}
    oneshot = report["evaluations"]["oneshot"]["metrics"]
    assert logged[-1] == {f"oneshot:{k}": v for k, v in oneshot.items()} != {}
    assert recorded[-2:] == [
        {"event": "logger.close", "status": "done", "error": None},
        {"event": "run_finished", "rank": 0, "status": "done", "error": None, "steps": 8},
    ]


def test_observers_get_the_metrics_without_a_log_section(
    with_record: Plugins, tmp_path: Path, log_dir: Path
) -> None:
    run(make_recipe(TINY_RECIPE, with_record), tmp_path / "run", plugins=with_record,
        progress=False)  # fmt: skip
    recorded = events(log_dir)
    assert not [e for e in recorded if e["event"].startswith("logger.")]
    # every: train.log_every (20) is past the end: one train row, at the last step
    assert rows(recorded, "metrics_logged") == [(4, "test"), (8, "train"), (8, "test")]


def test_a_failed_run_closes_its_loggers_as_failed_and_raises(
    with_record: Plugins, tmp_path: Path, log_dir: Path
) -> None:
    diverging = RECIPE.replace("lr: 0.1", "lr: 1.0e+30") + "log: {every: 1, to: [{name: record}]}\n"
    with pytest.raises(NonFiniteLoss) as info:
        run(make_recipe(diverging, with_record), tmp_path / "run", plugins=with_record,
            progress=False)  # fmt: skip
    recorded = events(log_dir)
    close, finished = recorded[-2:]
    assert close == {"event": "logger.close", "status": "failed", "error": str(info.value)}
    assert finished["status"] == "failed" and finished["steps"] is None
    assert "not finite" in finished["error"]
    losses = [e["metrics"]["loss"] for e in recorded if e.get("phase") == "train"]
    assert all(abs(loss) < 1e30 for loss in losses)  # a diverged loss is never logged


def test_a_logger_that_raises_fails_the_run_and_is_closed(
    with_record: Plugins, tmp_path: Path, log_dir: Path
) -> None:
    recipe = make_recipe(RECIPE + "log: {to: [{name: record, fail_at: 4}]}\n", with_record)
    with pytest.raises(RuntimeError, match="told to fail at step 4"):
        run(recipe, tmp_path / "run", plugins=with_record, progress=False)
    close = [e for e in events(log_dir) if e["event"] == "logger.close"]
    assert len(close) == 1 and close[0]["status"] == "failed"
    assert close[0]["error"] == (
        "plugin 'file:loggers.py' (tests/support/loggers.py -) failed in RecordLogger.log: "
        "RuntimeError: record was told to fail at step 4"
    ).replace("tests/support/loggers.py", str(LOGGERS))


def test_a_resumed_run_logs_each_step_once_with_the_values_of_an_uninterrupted_one(
    with_record: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def logged(out: str, *max_steps: int) -> list[dict[str, Any]]:
        folder = tmp_path / f"{out}-events"
        folder.mkdir()
        monkeypatch.setenv("COMPRESSOR_TEST_LOG_DIR", str(folder))
        for i, steps in enumerate(max_steps):
            text = (RECIPE + RECORD).replace("seed: 0,", f"seed: 0, max_steps: {steps},")
            recipe = make_recipe(text.replace("every: 3", "every: 2"), with_record)
            run(recipe, tmp_path / out, plugins=with_record, resume=i > 0, progress=False)
        return events(folder)

    straight = logged("straight", 8)
    split = logged("split", 4, 8)  # stops at an evaluation and a train row: no extra rows
    assert [e["resumed_at"] for e in split if e["event"] == "run_started"] == [0, 4]
    # the evaluators also ran at the end of the first part; everything else is one row a step
    first_part = [(4, "evaluate")]
    assert sorted(rows(split)) == sorted(rows(straight) + first_part)
    assert len(set(rows(split))) == len(rows(split))
    values = {(e["step"], e["phase"]): e["metrics"] for e in split if e["event"] == "logger.log"}
    for e in straight:
        if e["event"] == "logger.log":
            assert values[e["step"], e["phase"]] == e["metrics"], (e["step"], e["phase"])


def test_a_finished_run_is_restored_without_its_logger_plugin(
    with_record: Plugins, tmp_path: Path, log_dir: Path
) -> None:
    from compressor.train.restore import restore_run

    run(make_recipe(TINY_RECIPE + RECORD, with_record), tmp_path / "run", plugins=with_record,
        progress=False)  # fmt: skip
    context = restore_run(tmp_path / "run", load_plugins(autoload=False))  # no 'record' there
    assert context.session.step == 8


def test_a_missing_logger_package_is_a_located_error_before_training(
    plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    recipe = make_recipe(TINY_RECIPE + "log:\n  to: [{name: tensorboard}]\n", plugins)
    with pytest.raises(CompressorError) as info:
        run(recipe, tmp_path / "run", plugins=plugins, progress=False)
    message = str(info.value)
    assert message.startswith(
        "test.yaml:8:8: log.to[0]: the 'tensorboard' logger needs the 'tensorboard' package "
    )
    assert message.endswith("pip install 'compressor[tensorboard]'")
    assert not (tmp_path / "run").exists()


def test_under_torchrun_only_rank_zero_logs(tmp_path: Path) -> None:
    """Two CPU processes (gloo): one TensorBoard folder, one CSV, the logger and the metrics on
    rank 0 only; both ranks are told that the run started and ended."""
    pytest.importorskip("torch.utils.tensorboard", reason="needs the 'tensorboard' extra")
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        "name: ddp\nmodel: {name: mlp, hidden: [16]}\n"
        "data: {name: synthetic, samples: 64, test_samples: 32, features: 8, classes: 3,\n"
        "       batch_size: 8, drop_last: true}\n"
        "train: {epochs: 2, seed: 0, eval_every: 1ep}\noptimizer: {name: sgd, lr: 0.1}\n"
        "log: {every: 2, to: [{name: tensorboard}, {name: csv}, {name: record}]}\n"
    )
    log_dir = tmp_path / "events"
    log_dir.mkdir()
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COMPRESSOR_TEST_LOG_DIR": str(log_dir)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "compressor.cli", "--plugin", str(LOGGERS), "run", str(recipe),
               "--out", str(out), "--quiet"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "metrics.csv", "model.pt", "report.json", "tensorboard"
    ]  # fmt: skip
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file: rank 0's
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,phase,name,value"
    assert len({line.split(",")[0] for line in lines[1:]}) == 4  # steps 2, 4 (eval), 6, 8 ...
    assert len(lines) - 1 == len(set(lines[1:]))  # ... each row once, though two ranks ran

    zero, one = events(log_dir, 0), events(log_dir, 1)
    assert [e["event"] for e in one] == ["run_started", "run_finished"]
    assert one[0]["rank"] == 1 and one[0]["world_size"] == 2 and one[1]["status"] == "done"
    assert {e["rank"] for e in zero if "rank" in e} == {0}
    assert rows(zero) == [(2, "train"), (4, "train"), (4, "test"), (6, "train"), (8, "train"),
                          (8, "test")]  # fmt: skip
    assert rows(zero, "metrics_logged") == rows(zero)
