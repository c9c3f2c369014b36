"""Hugging Face models from configs (random init): tied embeddings, GPT-2's Conv1D, and both
through Session and `compressor run` (issue 11's transformer coverage)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compressor import Session
from compressor.host.manager import Plugins
from compressor.plugin_api import DataInfo, nm_violations, select_targets
from compressor_plugins.zoo.hf import HFModel
from tests.conftest import make_recipe

transformers = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed"
)

GPT2 = "{name: hf, architecture: GPT2LMHeadModel, config: {n_layer: 2, n_embd: 32, n_head: 2}}"
BERT = (
    "{name: hf, architecture: BertForMaskedLM, config: {num_hidden_layers: 2, hidden_size: 32, "
    "num_attention_heads: 2, intermediate_size: 64}}"
)
TOKENS = DataInfo((16,), 257, torch.int64)


def build(spec: str, plugins: Plugins) -> nn.Module:
    import yaml

    config = HFModel.Config.model_validate(yaml.safe_load(spec))
    torch.manual_seed(0)
    return HFModel(config).build(TOKENS)


def session(model: nn.Module, body: str, plugins: Plugins) -> Session:
    recipe = make_recipe(
        f"name: s\noptimizer: {{name: sgd, lr: 0.05}}\ntrain: {{epochs: 1}}\n{body}", plugins
    )
    return Session(model, recipe, steps_per_epoch=4, plugins=plugins)


def lm_steps(
    model: nn.Module, s: Session, steps: int, optimizer: torch.optim.Optimizer | None = None
) -> None:
    optimizer = optimizer or s.optimizer()
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 257, (4, 16), generator=generator)

        def closure(ids: torch.Tensor = ids) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = model(ids, labels=ids).loss
            loss.backward()
            return loss

        s.step_end(optimizer.step(closure))


def test_gpt2_conv1d_layers_are_eligible_and_transposed(plugins: Plugins) -> None:
    model = build(GPT2, plugins)
    targets = {t.name: t for t in select_targets(model)}
    conv1d = [t for t in targets.values() if t.transposed]
    assert len(conv1d) == 8  # c_attn, c_proj, c_fc, mlp.c_proj in each of 2 blocks
    assert targets["transformer.h.0.attn.c_attn.weight"].param.shape == (32, 96)  # [in, out]
    assert "transformer.wte.weight" not in targets and "lm_head.weight" not in targets  # dense
    (tied,) = select_targets(model, include=["lm_head.weight"])  # named: one target, two names
    assert set(tied.aliases) == {"transformer.wte.weight", "lm_head.weight"}


def test_gpt2_gmp_to_50_percent_through_session(plugins: Plugins) -> None:
    model = build(GPT2, plugins)
    body = "modifiers:\n  - {type: gmp, operator: {kind: magnitude, scope: layer}, schedule: {kind: linear, final: 0.5, end: 2}}\n"
    s = session(model, body, plugins)
    lm_steps(model, s, 3)
    for target in select_targets(model):
        zeros = int((target.param == 0).sum())
        assert zeros == round(0.5 * target.numel), target.name  # every tensor exactly
    assert s.sparsity()["global"] == pytest.approx(0.5, abs=1e-4)
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)  # still one tensor


def test_gpt2_nm_runs_along_the_input_axis_of_conv1d(plugins: Plugins) -> None:
    model = build(GPT2, plugins)
    body = "modifiers:\n  - {type: oneshot, operator: {kind: nm, keep: 2, group: 4}}\n"
    s = session(model, body, plugins)
    lm_steps(model, s, 1)
    for target in select_targets(model):
        weight = target.param.detach()
        out_in = weight.t() if target.transposed else weight
        assert nm_violations(out_in, 2, 4) == 0, target.name
        if target.transposed:  # along the stored [in, out] rows it does not hold
            assert nm_violations(weight, 2, 4) > 0


def test_gpt2_cram_plus_nm_through_session(plugins: Plugins) -> None:
    model = build(GPT2, plugins)
    body = (
        "wrapper: {name: cram, rho: 0.05, operators: [{kind: nm, keep: 2, group: 4}, "
        "{kind: nm, keep: 4, group: 8}]}\n"
    )
    s = session(model, body, plugins)
    seen = []
    optimizer = s.optimizer()
    original = optimizer.base.perturb

    def spy(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        original(params, grads)
        operator = optimizer.base.choices[optimizer.base.last_target[0]][0]
        keep, group = operator.keep, operator.group
        for target in select_targets(model):
            w = target.param.detach()
            seen.append(nm_violations(w.t() if target.transposed else w, keep, group))

    optimizer.base.perturb = spy
    lm_steps(model, s, 3, optimizer)
    assert seen and all(v == 0 for v in seen)  # pass 2 ran at an N:M point along the input axis
    assert s.sparsity()["global"] < 0.01  # CrAM trains a dense model


def test_bert_tied_embeddings_share_one_mask(plugins: Plugins) -> None:
    model = build(BERT, plugins)
    decoder = model.cls.predictions.decoder
    assert decoder.weight is model.bert.embeddings.word_embeddings.weight
    body = "modifiers:\n  - {type: oneshot, sparsity: 0.5, operator: {kind: magnitude, modules: [linear, embedding]}}\n"
    s = session(model, body, plugins)
    s.begin()
    names = list(s.masks)
    assert "bert.embeddings.word_embeddings.weight" in names
    assert "cls.predictions.decoder.weight" not in names  # an alias, not a second mask
    assert s.masks.get("cls.predictions.decoder.weight") is s.masks.get(
        "bert.embeddings.word_embeddings.weight"
    )
    stats = s.sparsity()
    assert stats["global"] == pytest.approx(0.5, abs=1e-4)
    assert "bert.embeddings.word_embeddings.weight" in stats["per_layer"]  # embeddings count
    assert "bert.embeddings.position_embeddings.weight" in stats["per_layer"]


def write_text(path: Path) -> Path:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "wizards",
        "hex",
        "jolly",
        "zebras",
    ]
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(words), (6000,), generator=generator).tolist()
    path.write_text(" ".join(words[i] for i in picks))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compressor.cli", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("model", "task", "special"),
    [(GPT2, "", 0), (BERT, "task: {name: masked_lm, mask_token: 256, vocab_size: 256}\n", 1)],
    ids=["gpt2-causal", "bert-masked"],
)
@pytest.mark.parametrize("method", ["gmp", "cram-nm"])
def test_compressor_run_on_token_models(
    tmp_path: Path, model: str, task: str, special: int, method: str
) -> None:
    write_text(tmp_path / "corpus.txt")
    compression = {
        "gmp": "modifiers:\n  - {type: gmp, operator: {kind: magnitude, scope: layer}, schedule: {kind: linear, final: 0.5, end: 2}}\n",
        "cram-nm": "wrapper: {name: cram, rho: 0.05, operators: [{kind: nm, keep: 2, group: 4}]}\n",
    }[method]
    (tmp_path / "r.yaml").write_text(
        f"name: lm\nmodel: {model}\n"
        f"data: {{name: text, path: corpus.txt, block_size: 16, batch_size: 8, special_tokens: {special}}}\n"
        f"{task}train: {{epochs: 1, max_steps: 4}}\noptimizer: {{name: adamw, lr: 1.0e-3}}\n"
        f"{compression}"
        "evaluate:\n  oneshot: {sparsities: [0.5], targets: [{kind: nm}], bn_recalibration: {batches: 2, batch_size: 8}}\n"
        "  realised: {batch_sizes: [1], repeats: 2}\n"
    )
    result = cli("run", "r.yaml", "--out", "run", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["metric"]["name"] == "perplexity" and not report["metric"]["higher_is_better"]
    assert report["metrics"]["test_perplexity"] > 1
    expected = 0.5 if method == "gmp" else 0.0
    assert report["sparsity"]["global"] == pytest.approx(expected, abs=1e-3)
    realised = report["evaluations"]["realised"]["details"]
    assert realised["latency_ms"]["batch1"]["speedup"] > 0  # ran on token ids


def test_channel_pruning_of_a_token_model_is_refused_by_validate(tmp_path: Path) -> None:
    write_text(tmp_path / "corpus.txt")
    (tmp_path / "r.yaml").write_text(
        f"name: lm\nmodel: {GPT2}\ndata: {{name: text, path: corpus.txt, block_size: 16}}\n"
        "optimizer: {name: sgd}\n"
        "modifiers:\n  - {type: oneshot, sparsity: 0.5, operator: {kind: channel}}\n"
    )
    result = cli("validate", "r.yaml", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("r.yaml:") and "modifiers[0].operator: channel pruning does not" in line
    assert "attention" in line or "Conv1D" in line


def run_on_stdlib_text(tmp_path: Path, model: str, rest: str, name: str = "r") -> dict[str, Any]:
    """``compressor run`` of ``model`` on the default text (2 steps); the report."""
    (tmp_path / f"{name}.yaml").write_text(
        f"name: lm\nmodel: {model}\ndata: {{name: text, block_size: 16, batch_size: 8}}\n"
        f"train: {{epochs: 1, max_steps: 2}}\noptimizer: {{name: adamw, lr: 1.0e-3}}\n{rest}"
    )
    result = cli("run", f"{name}.yaml", "--out", name, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return dict(json.loads((tmp_path / name / "report.json").read_text()))


def test_masked_lm_on_byte_text_runs_with_the_default_mask_token(tmp_path: Path) -> None:
    """No mask_token, no data file: the NUL byte masks, the standard-library text trains."""
    report = run_on_stdlib_text(tmp_path, BERT, "task: {name: masked_lm}\n")
    assert report["steps"] == 2 and math.isfinite(report["metrics"]["test_perplexity"])


def test_masked_lm_replaces_chosen_tokens_by_nul_and_random_bytes() -> None:
    from compressor_plugins.zoo.tasks import MaskedLM

    task = MaskedLM(MaskedLM.Config(name="masked_lm", probability=0.5))
    ids = torch.full((64, 64), 65)  # "A" everywhere
    batch = task.prepare(ids, torch.Generator().manual_seed(0))
    chosen = batch["labels"] != -100
    changed = batch["input_ids"][chosen]
    assert (changed == 0).float().mean() > 0.7  # 80% of the chosen become NUL
    assert int(changed.max()) < 256  # random replacements are bytes


def test_lm_embeddings_and_head_stay_dense_unless_named(tmp_path: Path) -> None:
    """GPT-2's wte is tied to lm_head: the default selection leaves both dense (explain says
    so); naming them prunes them."""
    prune = (
        "modifiers:\n  - {type: oneshot, sparsity: 0.5, operator: {kind: magnitude, scope: layer"
    )
    layers = run_on_stdlib_text(tmp_path, GPT2, prune + "}}\n")["sparsity"]["per_layer"]
    explained = cli("explain", "r.yaml", cwd=tmp_path)
    assert "language model: transformer.wte.weight stay dense unless" in explained.stdout
    assert "transformer.wte.weight" not in layers
    assert layers["transformer.h.0.attn.c_attn.weight"] == 0.5
    named = run_on_stdlib_text(tmp_path, GPT2, prune + ", include: ['*.weight']}}\n", "named")
    assert named["sparsity"]["per_layer"]["transformer.wte.weight"] == 0.5
