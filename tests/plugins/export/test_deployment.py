"""The ``deployment`` evaluator: int8 accuracy in ONNX Runtime, file sizes and side-by-side
latency reach the study table and its plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.cli.main import main

RECIPE = """\
version: 1
name: {name}
model: {{name: mnist1d_cnn, width: 16}}
data: {{name: mnist1d, samples: 200, seed: 1, batch_size: 32}}
train: {{epochs: 1, seed: 0}}
optimizer: {{name: sgd, lr: 0.05}}
{modifiers}evaluate:
  deployment: {{batch_sizes: [1, 4], repeats: 2, calibration_batches: 2}}
"""
CHANNEL = (
    "modifiers:\n  - {type: gmp, operator: {kind: channel}, "
    "schedule: {kind: linear, final: 0.5, end: 2, every: 1}}\n"
)


def test_study_table_shows_deployment_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dense.yaml").write_text(RECIPE.format(name="dense", modifiers=""))
    (tmp_path / "channel.yaml").write_text(RECIPE.format(name="channel", modifiers=CHANNEL))
    out = tmp_path / "study"
    args = ["compare", str(tmp_path / "dense.yaml"), str(tmp_path / "channel.yaml")]
    assert main([*args, "--out", str(out)]) == 0
    table = (out / "report.md").read_text()
    for title in ("int8 test accuracy %", "int8 KB", "int8 ORT ×b1", "int8 ORT ×b4"):
        assert title in table
    assert (out / "deploy_size.png").exists() and (out / "deploy_latency.png").exists()
    reports = {
        p.parent.name.split("-")[0]: json.loads(p.read_text())
        for p in out.glob("runs/*/report.json")
    }
    dense = reports["dense"]["evaluations"]["deployment"]
    channel = reports["channel"]["evaluations"]["deployment"]
    assert set(dense["details"]["latency_ms"]["batch4"]) == {"torch", "ort_fp32", "ort_int8"}
    assert dense["details"]["export"]["fp32"]["relative_diff"] <= 1e-4
    assert 0.0 <= dense["metrics"]["int8_accuracy"] <= 1.0
    assert channel["details"]["export"]["channels_removed"]
    assert channel["metrics"]["fp32_kb"] < dense["metrics"]["fp32_kb"]
