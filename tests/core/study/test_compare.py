"""Side-by-side comparison: studies, the results store, resume after a kill, reports, plots."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compressor.cli.main import main
from compressor.host.manager import Plugins
from compressor.study.plots import percent_limits
from compressor.study.runner import STORE, run_study
from compressor.study.spec import load_study
from compressor.study.store import Store
from tests.support import ROOT

RECIPE = """\
name: {name}
model: {{name: mlp, hidden: [16]}}
data: {{name: synthetic, samples: 64, test_samples: 32, features: 8, classes: 3, batch_size: 16}}
train: {{epochs: 2}}
optimizer: {{name: sgd, lr: 0.1}}
"""
GMP = "modifiers:\n  - {type: gmp, schedule: {kind: cubic, final: 0.5, end: 1ep}}\n"
STUDY = """\
version: 1
name: tiny
seeds: [0, 1]
shared:
  train: {epochs: EPOCHS}
  evaluate:
    oneshot: {sparsities: [0.5, 0.8], bn_recalibration: {batches: 2, batch_size: 16, calibration_samples: 32}}
recipes:
  - sgd.yaml
  - {path: gmp.yaml, label: GMP 50%}
"""


def write_study(folder: Path, epochs: int = 2, *, with_oneshot: bool = True) -> Path:
    (folder / "sgd.yaml").write_text(RECIPE.format(name="sgd"))
    (folder / "gmp.yaml").write_text(RECIPE.format(name="gmp") + GMP)
    text = STUDY.replace("EPOCHS", str(epochs))
    if not with_oneshot:
        text = "\n".join(
            line for line in text.splitlines() if "evaluate" not in line and "oneshot" not in line
        )
    (folder / "study.yaml").write_text(text + "\n")
    return folder / "study.yaml"


def has_oneshot(plugins: Plugins) -> bool:
    return "oneshot" in plugins.registries.evaluators


def test_study_runs_every_recipe_and_seed_with_shared_settings(
    plugins: Plugins, tmp_path: Path
) -> None:
    study = load_study(
        write_study(tmp_path, 3, with_oneshot=has_oneshot(plugins)), plugins.registries
    )
    assert [t.key for t in study.trials] == [
        "sgd/seed0",
        "sgd/seed1",
        "GMP 50%/seed0",
        "GMP 50%/seed1",
    ]
    assert all(t.recipe.config.train.epochs == 3 for t in study.trials)
    assert [t.recipe.config.train.seed for t in study.trials] == [0, 1, 0, 1]
    store = run_study(study, tmp_path / "out", plugins=plugins, progress=False)
    rows = store.runs()
    assert [(r.label, r.seed, r.status) for r in rows] == [
        ("sgd", 0, "done"),
        ("sgd", 1, "done"),
        ("GMP 50%", 0, "done"),
        ("GMP 50%", 1, "done"),
    ]
    assert store.metrics("GMP 50%/seed1")["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert len(store.curve("sgd/seed0", "training")) == 3
    if has_oneshot(plugins):
        points = store.curve("sgd/seed0", "oneshot:robustness")
        assert [(label, style) for _, _, label, style in points] == [
            ("trained", "line"),
            ("0.5", "line"),
            ("0.8", "line"),
        ]
        assert store.metrics("sgd/seed0")["oneshot:0.5"] == points[1][1]


def test_store_rows_match_the_printed_table_and_files(
    plugins: Plugins,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path, with_oneshot=has_oneshot(plugins))
    assert main(["compare", str(study), "--out", "out", "--quiet"]) == 0
    printed = capsys.readouterr().out
    store = Store(tmp_path / "out" / STORE)
    accuracies = {}
    for label in ("sgd", "GMP 50%"):
        values = [store.metrics(f"{label}/seed{s}")["test_accuracy"] for s in (0, 1)]
        mean = sum(values) / 2
        accuracies[label] = f"{100 * mean:.2f}"
        assert accuracies[label] in printed
    with (tmp_path / "out" / "report.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0][:6] == ["method", "seeds", "trained accuracy %", "sparsity", "50%", "80%"]
    assert table[0][6:] == ["step ×sgd", "wall s"]
    assert [row[0] for row in table[1:]] == ["sgd", "GMP 50%"]
    assert table[2][2].startswith(accuracies["GMP 50%"])
    for name in ("robustness.png", "training.png", "report.md", "report.json"):
        path = tmp_path / "out" / name
        assert path.stat().st_size > 1000 or name.endswith((".md", ".json")), name
    assert (tmp_path / "out" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report is re-rendered from the store alone
    (tmp_path / "out" / "report.md").unlink()
    assert main(["report", "out"]) == 0
    assert "GMP 50%" in (tmp_path / "out" / "report.md").read_text()


def test_failing_run_is_reported_and_the_study_goes_on(plugins: Plugins, tmp_path: Path) -> None:
    path = write_study(tmp_path, with_oneshot=False)
    (tmp_path / "sgd.yaml").write_text(
        RECIPE.format(name="sgd").replace(
            "train: {epochs: 2}", "train: {epochs: 2, init_from: missing.pt}"
        )
    )
    store = run_study(
        load_study(path, plugins.registries), tmp_path / "out", plugins=plugins, progress=False
    )
    status = {r.key: r.status for r in store.runs()}
    assert status == {
        "sgd/seed0": "failed",
        "sgd/seed1": "failed",
        "GMP 50%/seed0": "done",
        "GMP 50%/seed1": "done",
    }
    failed = [r for r in store.runs() if r.status == "failed"][0]
    assert "missing.pt does not exist" in (failed.error or "")
    assert (tmp_path / "out" / "runs" / "sgd-seed0" / "error.txt").exists()


def test_killed_study_resumes_without_rerunning_finished_runs(tmp_path: Path) -> None:
    study = write_study(tmp_path, epochs=40, with_oneshot=False)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "compressor.cli.main",
        "compare",
        str(study),
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    database = out / STORE
    deadline = time.time() + 120
    done: list[tuple[str, float]] = []
    while time.time() < deadline and process.poll() is None:
        if database.exists():
            try:
                with sqlite3.connect(database) as db:
                    done = db.execute(
                        "SELECT key, finished_at FROM runs WHERE status = 'done'"
                    ).fetchall()
            except sqlite3.OperationalError:
                done = []
            if done:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 1 <= len(done) < 4, "the study should have been killed part-way"
    subprocess.run(command, env=env, check=True, capture_output=True)
    with sqlite3.connect(database) as db:
        rows = dict(
            db.execute("SELECT key, finished_at FROM runs WHERE status = 'done'").fetchall()
        )
    assert len(rows) == 4
    for key, finished_at in done:
        assert rows[key] == finished_at  # not re-run


def test_the_embedded_default_study_validates(plugins: Plugins) -> None:
    root = ROOT
    study = load_study(root / "recipes" / "studies" / "mnist1d.yaml", plugins.registries)
    assert {"SGD", "SAM", "CrAM+ Multi", "GMP 90%"} <= set(study.labels)
    epochs = {t.recipe.config.train.epochs for t in study.trials}
    assert epochs == {8}
    assert all(t.recipe.config.evaluate.oneshot is not None for t in study.trials)
    assert all(t.recipe.config.evaluate.deployment is not None for t in study.trials)


def test_labels_that_sanitise_alike_get_their_own_folders(plugins: Plugins, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(RECIPE.format(name="a"))
    (tmp_path / "s.yaml").write_text(
        "name: s\nrecipes:\n  - {path: a.yaml, label: 'GMP 90%'}\n  - {path: a.yaml, label: 'GMP 90?'}\n"
    )
    study = load_study(tmp_path / "s.yaml", plugins.registries)
    folders = [t.folder for t in study.trials]
    assert len(set(folders)) == 2 and all(f.startswith("GMP-90-") for f in folders)


def test_shared_replaces_a_section_whose_type_changes(plugins: Plugins, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        RECIPE.format(name="a")
        .replace("{name: synthetic, samples: 64,", "{name: mnist1d, samples: 200,")
        .replace("features: 8, classes: 3, ", "")
    )
    (tmp_path / "s.yaml").write_text(
        "name: s\nshared:\n  data: {name: synthetic, features: 5}\nrecipes: [a.yaml]\n"
    )
    (trial,) = load_study(tmp_path / "s.yaml", plugins.registries).trials
    data = trial.recipe.config.data
    assert data.name == "synthetic" and data.features == 5 and data.samples == 512  # its default


def test_validate_checks_a_study_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(tmp_path, with_oneshot=False)
    assert main(["validate", str(path)]) == 0
    assert "ok — study 'tiny', 2 recipe(s) × 2 seed(s) = 4 runs" in capsys.readouterr().out


def test_compare_labels_by_the_set_name_shows_short_wall_times_and_leaves_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sgd.yaml").write_text(RECIPE.format(name="sgd"))
    args = ["compare", "sgd.yaml", "--out", "out", "--quiet", "--set", "name=renamed"]
    assert main(args) == 0
    with (tmp_path / "out" / "report.csv").open() as handle:
        header, row = list(csv.reader(handle))
    assert row[0] == "renamed" and "step ×renamed" in header
    wall = Store(tmp_path / "out" / STORE).runs()[0].wall_time_s
    assert wall is not None
    assert row[header.index("wall s")] == (f"{wall:.1f}" if wall < 10 else f"{wall:.0f}")
    assert not (tmp_path / "out" / ".compare.lock").exists()
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<td>renamed</td>" in page and page.count('src="data:image/png;base64,') >= 1
    assert "http" not in page  # self-contained: nothing is fetched


def test_percent_axes_are_scaled_to_the_data() -> None:
    """84–92%: the axis spans the data plus 8% of its range, not a floor 40 points down."""
    assert percent_limits([84.0, 88.0, 92.0]) == pytest.approx((83.36, 92.64))
    assert percent_limits([10.0, 95.0]) == pytest.approx((55.0 - 3.2, 98.2))  # collapse: cut
    assert percent_limits([99.9, 99.9]) == pytest.approx((99.4, 100.0))
