"""The realised evaluator: mask sparsity, exported size and latency, reported separately."""

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
from compressor.host.manager import Plugins
from compressor.plugin_api import DataInfo, DataSplits, call_model, stdlib_text
from compressor_plugins.evaluate.realised import Realised, forward_flops
from compressor_plugins.zoo.models import MNIST1DCNN
from tests.conftest import make_recipe
from tests.support import ROOT
from tests.support.context import run_context

RECIPE = """\
name: r
model: {name: mnist1d_cnn, width: 8}
data: {name: synthetic, features: 40, classes: 10}
optimizer: {name: sgd}
modifiers:
  - {type: oneshot, sparsity: 0.5, operator: OPERATOR}
"""


def evaluate(plugins: Plugins, operator: str) -> dict:  # type: ignore[type-arg]
    torch.manual_seed(0)
    model = MNIST1DCNN(40, 10, width=8)
    session = Session(
        model,
        make_recipe(RECIPE.replace("OPERATOR", operator), plugins),
        steps_per_epoch=4,
        plugins=plugins,
    )
    session.begin()
    x = torch.randn(16, 40)
    data = DataSplits(
        x,
        torch.zeros(16, dtype=torch.long),
        x,
        torch.zeros(16, dtype=torch.long),
        DataInfo((40,), 10),
    )
    config = Realised.Config(batch_sizes=[1, 4], repeats=3)
    evaluation = Realised(config).run(run_context(session, data), model)
    assert [c.title for c in evaluation.columns] == ["export KB", "×b1", "×b4"]
    assert evaluation.metrics["stored_kb"] == evaluation.details["bytes"]["exported"] / 1024
    return evaluation.details


def test_unstructured_masks_stay_dense(plugins: Plugins) -> None:
    result = evaluate(plugins, "{kind: magnitude}")
    assert result["mask_sparsity"] > 0.45
    assert result["physically_smaller"] is False
    assert result["bytes"]["exported"] == result["bytes"]["trained"]
    assert set(result["latency_ms"]) == {"batch1", "batch4"}


def test_channel_masks_export_a_smaller_model(plugins: Plugins) -> None:
    result = evaluate(plugins, "{kind: channel}")
    assert result["physically_smaller"] is True
    assert result["bytes"]["exported"] < result["bytes"]["trained"]
    assert result["params"]["pruned"] < 0.6 * result["params"]["dense"]
    assert result["latency_ms"]["batch4"]["speedup"] > 0


def test_trained_model_is_not_modified(plugins: Plugins) -> None:
    torch.manual_seed(0)
    model: nn.Module = MNIST1DCNN(40, 10, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = Session(
        model,
        make_recipe(RECIPE.replace("OPERATOR", "{kind: channel}"), plugins),
        steps_per_epoch=4,
        plugins=plugins,
    )
    session.begin()
    masked = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 40)
    data = DataSplits(
        x,
        torch.zeros(8, dtype=torch.long),
        x,
        torch.zeros(8, dtype=torch.long),
        DataInfo((40,), 10),
    )
    Realised(Realised.Config(batch_sizes=[1], repeats=2)).run(run_context(session, data), model)
    assert all(torch.equal(masked[k], v) for k, v in model.state_dict().items())
    assert before.keys() == masked.keys()


TINY_LLAMA = (
    "model.config={num_hidden_layers: 2, hidden_size: 64, intermediate_size: 96, "
    "num_attention_heads: 4, num_key_value_heads: 4}"
)


def test_flops_count_linear_layers_and_cpu_attention() -> None:
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    x = torch.randint(0, 256, (3, 32))
    linear = 2 * 3 * 32 * (2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 96) + 64 * 256)
    attention = 2 * (2 * 3 * 4 * 32 * 32 * (16 + 16))  # every query head, per layer
    assert forward_flops(model, x, call_model) == linear + attention


def test_the_structured_study_shows_realised_sizes_beside_unstructured(tmp_path: Path) -> None:
    """The shipped study (dense, heads+neurons, GMP) on a tiny Llama and budget: the exported
    structured model is smaller by exactly the removed units; the unstructured one is not."""
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    study = ROOT / "recipes" / "studies" / "llama-tiny-structured.yaml"
    text = tmp_path / "text.txt"  # the default corpus's first 6 kB: ten steps an epoch
    text.write_bytes(stdlib_text()[:6000])
    sets = [TINY_LLAMA, f"data.path={text}", "data.block_size=32", "train.epochs=3",
            "evaluate.realised.repeats=2"]  # fmt: skip
    command = [sys.executable, "-m", "compressor.cli", "compare", str(study), "--out",
               str(tmp_path / "study"), "--quiet"] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "study" / "report.csv").read_text().splitlines()[0].split(",")
    assert header[2:13] == ["trained perplexity", "sparsity", "params k", "MFLOPs b1",
                            "export KB", "ms b1", "×b1", "ms b16", "×b16", "step ×dense",
                            "wall s"]  # fmt: skip
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    metrics = {
        m["label"]: {k: v["mean"] for k, v in m["metrics"].items()} for m in report["methods"]
    }
    # dense: 2·256·64 embeddings/head + 2 layers × (4·64·64 + 3·64·96 + 2·64) + 64
    assert metrics["dense"]["realised:params_k"] == metrics["GMP same count"]["realised:params_k"]
    assert metrics["dense"]["realised:params_k"] == pytest.approx(102.720)
    # 3 of 4 heads of 16, 48 of 96 neurons kept
    assert metrics["heads+neurons"]["realised:params_k"] == pytest.approx(
        (2 * 256 * 64 + 2 * (4 * 64 * 48 + 3 * 64 * 48 + 2 * 64) + 64) / 1e3
    )
    linear = 2 * 32 * (2 * (4 * 64 * 48 + 3 * 64 * 48) + 64 * 256)
    attention = 2 * (2 * 3 * 32 * 32 * 32)
    assert metrics["heads+neurons"]["realised:mflops"] == pytest.approx((linear + attention) / 1e6)
    assert metrics["GMP same count"]["sparsity"] > metrics["heads+neurons"]["sparsity"] > 0.3
    run = json.loads(
        (tmp_path / "study" / "runs" / "heads-neurons-seed0" / "report.json").read_text()
    )
    details = run["evaluations"]["realised"]["details"]
    assert details["physically_smaller"] and details["max_abs_diff"] <= 1e-5
    assert set(details["kept"]["heads"].values()) == {3}
    gmp = json.loads(
        (tmp_path / "study" / "runs" / "GMP-same-count-seed0" / "report.json").read_text()
    )
    assert gmp["evaluations"]["realised"]["details"]["physically_smaller"] is False
