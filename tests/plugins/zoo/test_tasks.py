"""The built-in tasks: exact losses and metrics on small tensors, deterministic masking."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor_plugins.zoo.tasks import IGNORE, CausalLM, Classification, MaskedLM


def test_classification_loss_and_metrics() -> None:
    task = Classification(Classification.Config())
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 0.5, 3.0, 0.1, 0.2, 0.3]])
    labels = torch.tensor([1, 2])
    assert torch.equal(task.loss(logits, (None, labels)), F.cross_entropy(logits, labels))
    totals: dict[str, float] = {}
    task.update(totals, logits, (None, labels))
    task.update(totals, SimpleNamespace(logits=logits[:1]), (None, torch.tensor([5])))  # HF output
    metrics = task.finish(totals)
    assert metrics["accuracy"] == pytest.approx(1 / 3)  # sample 2 right, 1 and 3 wrong
    assert metrics["top5"] == pytest.approx(2 / 3)  # class 5 is the sixth of sample 3
    expected = (
        float(F.cross_entropy(logits, labels, reduction="sum"))
        + float(F.cross_entropy(logits[:1], torch.tensor([5]), reduction="sum"))
    ) / 3
    assert metrics["loss"] == pytest.approx(expected)
    assert task.metric.name == "accuracy" and task.metric.higher_is_better


def test_causal_lm_predicts_the_next_token() -> None:
    task = CausalLM(CausalLM.Config())
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (2, 5))
    logits = torch.randn(2, 5, 7)
    manual = F.cross_entropy(logits[:, :4].reshape(-1, 7), ids[:, 1:].reshape(-1))
    assert torch.allclose(task.loss(logits, ids), manual)
    totals: dict[str, float] = {}
    task.update(totals, logits, ids)
    metrics = task.finish(totals)
    assert totals["tokens"] == 8
    assert metrics["loss"] == pytest.approx(float(manual))
    assert metrics["perplexity"] == pytest.approx(math.exp(float(manual)))
    assert not task.metric.higher_is_better and task.metric.name == "perplexity"


def test_causal_lm_evaluates_a_model_over_batches() -> None:
    task = CausalLM(CausalLM.Config())
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 11))
    batches = [torch.randint(0, 11, (3, 6)) for _ in range(2)]
    result = task.evaluate(model, batches, torch.device("cpu"))
    with torch.no_grad():
        losses = [task._losses(model(b), b, "sum") for b in batches]
    assert result["loss"] == pytest.approx(float(sum(losses)) / (2 * 3 * 5))


def test_masked_lm_masks_once_per_generator_seed() -> None:
    task = MaskedLM(MaskedLM.Config(mask_token=256, vocab_size=256))
    ids = torch.randint(0, 256, (64, 128), generator=torch.Generator().manual_seed(0))
    a = task.prepare(ids, torch.Generator().manual_seed(3))
    b = task.prepare(ids, torch.Generator().manual_seed(3))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    chosen = a["labels"] != IGNORE
    assert torch.equal(a["labels"][chosen], ids[chosen])
    assert 0.13 < float(chosen.float().mean()) < 0.17  # 15% of positions
    masked = chosen & (a["input_ids"] == 256)
    assert 0.77 < float(masked.sum() / chosen.sum()) < 0.83  # 80% of those become [MASK]
    assert torch.equal(a["input_ids"][~chosen], ids[~chosen])  # the rest is untouched
    logits = torch.randn(64, 128, 257)
    loss = task.loss(logits, a)
    manual = F.cross_entropy(logits[chosen], ids[chosen])
    assert torch.allclose(loss, manual)
