"""The ``tensorboard`` and ``csv`` loggers: what they write, and a crash then a resume.

One run goes straight through; another crashes at step 6, two steps after its last checkpoint
(a test logger raises there, after TensorBoard and the CSV have logged step 6), and is resumed
without that logger. Both folders must show every step once, with the same values.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from compressor.host.manager import Plugins, load_plugins
from compressor.train.loop import run
from tests.conftest import TINY_RECIPE, make_recipe
from tests.support import ROOT

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
# 64 samples in batches of 16: 4 steps an epoch, 8 in all, evaluated at 4 and 8
RECIPE = TINY_RECIPE + (
    "modifiers:\n  - {type: gmp, schedule: {kind: linear, final: 0.5, end: 6}}\n"
    "evaluate:\n  oneshot: {sparsities: [0.5]}\n"
)
LOGGERS = "[{name: csv}" + (", {name: tensorboard}" if HAS_TENSORBOARD else "")


def log_section(extra: str = "") -> str:
    return f"log: {{every: 2, to: {LOGGERS}{extra}]}}\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    plugins: Plugins = load_plugins([ROOT / "tests" / "support" / "loggers.py"], autoload=False)
    tmp = tmp_path_factory.mktemp("logged")
    straight, split = tmp / "straight", tmp / "split"
    run(make_recipe(RECIPE + log_section(), plugins), straight, plugins=plugins, progress=False)
    crashing = make_recipe(RECIPE + log_section(", {name: record, fail_at: 6}"), plugins)
    with pytest.raises(RuntimeError, match="fail at step 6"):
        run(crashing, split, plugins=plugins, progress=False)
    resumed = make_recipe(RECIPE + log_section(), plugins)  # log: is no part of the resume key
    run(resumed, split, plugins=plugins, resume=True, progress=False)
    return {"straight": straight, "split": split}


def test_the_csv_holds_one_row_per_metric_and_step(runs: dict[str, Path]) -> None:
    with (runs["straight"] / "metrics.csv").open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["step", "epoch", "phase", "name", "value"]
    train = ["loss", "lr", "sparsity"]
    test = ["train_loss", "test_accuracy", "test_top5", "test_loss", "sparsity"]
    evaluate = ["oneshot:dense", "oneshot:0.5", "oneshot:0.5/before_recalibration",
                "oneshot:0.5/sparsity"]  # fmt: skip
    expected = (
        [("2", "0.5", "train", n) for n in train]
        + [("4", "1.0", "train", n) for n in train]
        + [("4", "1.0", "test", n) for n in test]
        + [("6", "1.5", "train", n) for n in train]
        + [("8", "2.0", "train", n) for n in train]
        + [("8", "2.0", "test", n) for n in test]
        + [("8", "2.0", "evaluate", n) for n in evaluate]
    )
    assert [tuple(row[:4]) for row in rows] == expected
    report = json.loads((runs["straight"] / "report.json").read_text())
    values = {(int(r[0]), r[2], r[3]): float(r[4]) for r in rows}
    for row in report["history"]:
        for name in test:
            assert values[row["step"], "test", name] == row[name], (row["step"], name)
    for name, value in report["evaluations"]["oneshot"]["metrics"].items():
        assert values[8, "evaluate", f"oneshot:{name}"] == value
    assert values[2, "train", "lr"] == 0.1
    assert values[8, "train", "sparsity"] == report["sparsity"]["global"]


def test_a_resumed_csv_drops_the_rows_after_the_checkpoint_and_equals_a_straight_run(
    runs: dict[str, Path],
) -> None:
    split = (runs["split"] / "metrics.csv").read_text()
    assert split == (runs["straight"] / "metrics.csv").read_text()
    assert split.count("\n6,1.5,train,loss,") == 1


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="needs the 'tensorboard' extra")
def test_tensorboard_scalars_per_phase_each_step_once_after_a_resume(
    runs: dict[str, Path],
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for name, out in runs.items():
        events = EventAccumulator(str(out / "tensorboard"))
        events.Reload()
        tags = events.Tags()["scalars"]
        scalars[name] = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}
    straight = scalars["straight"]
    assert sorted(straight) == sorted(
        ["train/loss", "train/lr", "train/sparsity", "test/train_loss", "test/test_accuracy",
         "test/test_top5", "test/test_loss", "test/sparsity", "evaluate/oneshot:dense",
         "evaluate/oneshot:0.5", "evaluate/oneshot:0.5/before_recalibration",
         "evaluate/oneshot:0.5/sparsity"]
    )  # fmt: skip
    assert [step for step, _ in straight["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in straight["test/test_accuracy"]] == [4, 8]
    # the crashed run's step 6 was written, then purged by the resumed writer
    assert len(list((runs["split"] / "tensorboard").iterdir())) == 2
    assert scalars["split"] == straight
