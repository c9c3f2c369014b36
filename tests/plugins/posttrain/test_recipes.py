"""Data-aware operators wherever an operator goes: the ``oneshot`` modifier through
``compressor run``, the one-shot evaluator's targets, and the quantized export of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor import Session
from compressor.plugin_api import DataInfo, DataSplits, select_targets
from compressor_plugins.posttrain.export import load_quantized
from tests.plugins.evaluate.test_oneshot_eval import _data, _trained_cnn
from tests.plugins.posttrain.support import bound, weights_of
from tests.support.context import run_context
from tests.support.cram import make_recipe

torch.set_num_threads(1)

TINY = """\
version: 1
name: posttrain-tiny
model: {name: mnist1d_cnn, width: 8}
data: {name: mnist1d, samples: 400, seed: 42, batch_size: 64}
train: {epochs: 2, seed: 0}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "compressor.cli", *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize(
    ("operator", "exact"),
    [
        ("{kind: wanda, calibration: {samples: 32, batch_size: 16}}", False),
        ("{kind: sparsegpt, calibration: {samples: 32}}", True),
    ],
)
def test_oneshot_modifier_through_compressor_run(
    tmp_path: Path, operator: str, exact: bool
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        TINY + f"modifiers:\n  - {{type: oneshot, sparsity: 0.5, at: 1ep, operator: {operator}}}\n"
    )
    cli("validate", str(recipe))
    cli("run", str(recipe), "--out", str(tmp_path / "run"))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["modifiers"] == [{"type": "oneshot", "target_sparsity": 0.5}]
    # SparseGPT prunes exactly round(s·n) per layer; Wanda round((1-s)·cols) kept per row
    # (the first conv has 5 inputs: 3 kept)
    sparsity = report["sparsity"]["global"]
    assert sparsity == 0.5 if exact else 0.48 < sparsity <= 0.5
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert float((state["classifier.weight"] == 0).float().mean()) == 0.5  # zeros kept by FT


def test_the_oneshot_modifier_writes_a_projections_values() -> None:
    """SparseGPT's updated weights are written, not just its mask."""
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(32, 6)
    expected = bound({"kind": "sparsegpt"}, model, [x]).project(
        {t.name: t.param for t in select_targets(model)}, 0.5
    )
    recipe = make_recipe(
        None, extra="modifiers:\n  - {type: oneshot, sparsity: 0.5, operator: {kind: sparsegpt}}\n"
    )
    session = Session(model, recipe, steps_per_epoch=1, calibration=lambda *a: iter([x]))
    session.begin()
    params = dict(model.named_parameters())
    for name, value in expected.items():
        assert torch.equal(params[name].detach(), value)
        assert torch.equal(session.masks.get(name), value != 0)


EVALUATE = """
evaluate:
  oneshot:
    sparsities: [0.5, 0.8]
    targets:
      - {kind: sparsegpt, calibration: {samples: 64}}
      - {kind: sparsegpt, nm: [2, 4], exclude: ["0.weight"], calibration: {samples: 64}}
      - {kind: wanda, calibration: {samples: 64}}
      - {kind: quant, bits: 4}
      - {kind: gptq, bits: 4, calibration: {samples: 64}}
    bn_recalibration: {batches: 5, batch_size: 32, calibration_samples: 100}
"""


def test_the_oneshot_evaluator_runs_data_aware_targets() -> None:
    data = _data()
    model = _trained_cnn(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = make_recipe(None, extra=EVALUATE)
    session = Session(model, recipe, steps_per_epoch=1)  # no data: the run context has it
    evaluator = session.registries.evaluators.build(recipe.config.evaluate.oneshot)
    context = run_context(session, data)
    evaluation = evaluator.run(context, model)
    labels = [row["label"] for row in evaluation.details["results"]]
    assert labels == [
        "0.5", "0.8", "sparsegpt 0.5", "sparsegpt 0.8", "sparsegpt 2:4", "wanda 0.5",
        "wanda 0.8", "rtn int4", "gptq int4",
    ]  # fmt: skip
    rows = {row["label"]: row for row in evaluation.details["results"]}
    assert rows["sparsegpt 0.8"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert rows["sparsegpt 2:4"]["sparsity"] == 0.5
    assert rows["gptq int4"]["sparsity"] < 0.3
    for row in rows.values():
        assert 0.0 <= row["after_recalibration"]["accuracy"] <= 1.0
    assert [c.title for c in evaluation.columns][-2:] == ["rtn int4", "gptq int4"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = evaluator.run(run_context(session, data), model)
    assert again.details == evaluation.details  # a fixed, seeded calibration set


def test_quantized_export_of_a_gptq_run_is_lossless(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        TINY
        + "modifiers:\n  - {type: oneshot, at: 2ep, operator: {kind: gptq, bits: 4,"
        + " calibration: {samples: 32}}}\n"
        + "evaluate:\n  quantized: {}\n"
    )
    cli("run", str(recipe), "--out", str(tmp_path / "run"))
    out = tmp_path / "q.pt"
    cli("export", str(tmp_path / "run"), "--format", "quantized", "--out", str(out))
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    restored = load_quantized(out)
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[k], state[k]) for k in state)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    quantized = report["evaluations"]["quantized"]
    assert quantized["details"]["lossless"] is True
    assert {t["bits"] for t in quantized["details"]["tensors"].values()} <= {2, 3, 4}
    assert quantized["metrics"]["bits_per_weight"] < 5.0
    assert quantized["details"]["file_bytes"] < quantized["details"]["float_bytes"]
    assert "no integer kernel" in quantized["details"]["latency"]


def test_quantized_size_counts_codes_scales_and_bitmaps() -> None:
    """Stored bits: k per weight, or a bitmap plus k per kept weight, plus 32 per scale."""
    from compressor_plugins.posttrain.export import QuantizedSize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[:, 32:] = 0  # half pruned: a bitmap pays (64 + 4·32 < 4·64 per row)
    operator = bound({"kind": "quant", "bits": 4}, model)
    with torch.no_grad():
        for name, value in operator.project(weights_of(operator), None).items():
            dict(model.named_parameters())[name].copy_(value)
    x, y = torch.randn(4, 64), torch.zeros(4, dtype=torch.long)
    data = DataSplits(x, y, x, y, DataInfo((64,), 4))
    session = Session(model, make_recipe(None), steps_per_epoch=1)
    evaluation = QuantizedSize(QuantizedSize.Config()).run(run_context(session, data), model)
    tensors = evaluation.details["tensors"]
    kept0 = int((model[0].weight != 0).sum())
    assert tensors["0.weight"] == {
        "bits": 4, "weights": 1024, "stored_bits": 1024 + 4 * kept0 + 16 * 32,
        "sparse_storage": True, "lossless": True,
    }  # fmt: skip
    assert tensors["2.weight"]["stored_bits"] == 4 * 64 + 4 * 32
    assert evaluation.details["lossless"] is True
