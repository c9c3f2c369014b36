"""Built-in tasks: ``classification``, ``causal_lm`` and ``masked_lm``.

* ``classification`` — batches ``(inputs, labels)`` (or a mapping with ``labels``); loss
  cross-entropy; metrics accuracy (headline), top-5 accuracy and loss.
* ``causal_lm`` — batches of token ids ``[B, T]`` (or a mapping with ``input_ids``); the model
  predicts token ``t + 1`` from tokens ``≤ t``; loss the mean cross-entropy per predicted token;
  metrics perplexity (headline, lower is better) and loss.
* ``masked_lm`` — the same batches; 15% of positions are chosen, 80% of those replaced by
  ``mask_token`` (default 0: the NUL byte, free in byte-level text), 10% by a random token, 10% kept (BERT's rule); the loss and perplexity are over
  the chosen positions only. The choice is drawn once per batch from the step's generator, so
  both passes of a two-pass step and a resumed run see the same masks.

Model outputs may be tensors or Hugging Face outputs (``.logits``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from compressor.plugin_api import Metric, Task, TypeConfig, hookimpl, logits_of

IGNORE = -100
"""The label of positions that do not count (torch's ``ignore_index`` default)."""


class Classification(Task):
    class Config(TypeConfig):
        name: Literal["classification"] = "classification"
        label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)

    metric = Metric("accuracy", "test accuracy", higher_is_better=True, percent=True)

    def inputs(self, batch: Any) -> Any:
        if isinstance(batch, Mapping):
            return {k: v for k, v in batch.items() if k != "labels"}
        return batch[0]

    def labels(self, batch: Any) -> torch.Tensor:
        return batch["labels"] if isinstance(batch, Mapping) else batch[1]

    def loss(self, output: Any, batch: Any) -> torch.Tensor:
        return F.cross_entropy(
            logits_of(output), self.labels(batch), label_smoothing=self.config.label_smoothing
        )

    def update(self, totals: dict[str, float], output: Any, batch: Any) -> None:
        logits, labels = logits_of(output), self.labels(batch)
        totals["loss"] = totals.get("loss", 0.0) + float(
            F.cross_entropy(logits, labels, reduction="sum")
        )
        totals["correct"] = totals.get("correct", 0) + int((logits.argmax(dim=1) == labels).sum())
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        totals["top5"] = totals.get("top5", 0) + int((top == labels[:, None]).any(dim=1).sum())
        totals["count"] = totals.get("count", 0) + labels.shape[0]

    def finish(self, totals: dict[str, float]) -> dict[str, float]:
        n = totals["count"]
        return {
            "accuracy": totals["correct"] / n,
            "top5": totals["top5"] / n,
            "loss": totals["loss"] / n,
        }


def token_ids(batch: Any) -> torch.Tensor:
    return batch["input_ids"] if isinstance(batch, Mapping) else batch


class CausalLM(Task):
    class Config(TypeConfig):
        name: Literal["causal_lm"] = "causal_lm"

    metric = Metric("perplexity", "test perplexity", higher_is_better=False, percent=False)

    def inputs(self, batch: Any) -> Any:
        if isinstance(batch, Mapping):
            return {k: v for k, v in batch.items() if k != "labels"}
        return batch

    def targets(self, batch: Any) -> torch.Tensor:
        """Next-token targets ``[B, T-1]`` (``labels`` if the batch has them, shifted)."""
        source = (
            batch["labels"]
            if isinstance(batch, Mapping) and "labels" in batch
            else token_ids(batch)
        )
        return source[:, 1:]

    def _losses(self, output: Any, batch: Any, reduction: str) -> torch.Tensor:
        logits = logits_of(output)[:, :-1]
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            self.targets(batch).reshape(-1),
            ignore_index=IGNORE,
            reduction=reduction,
        )

    def loss(self, output: Any, batch: Any) -> torch.Tensor:
        return self._losses(output, batch, "mean")

    def update(self, totals: dict[str, float], output: Any, batch: Any) -> None:
        targets = self.targets(batch)
        totals["loss"] = totals.get("loss", 0.0) + float(self._losses(output, batch, "sum"))
        totals["tokens"] = totals.get("tokens", 0) + int((targets != IGNORE).sum())

    def finish(self, totals: dict[str, float]) -> dict[str, float]:
        loss = totals["loss"] / max(totals["tokens"], 1)
        return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss}


NUL = 0  # byte-level text's default [MASK]: a byte that text files do not hold
BYTES = 256


class MaskedLM(Task):
    class Config(TypeConfig):
        name: Literal["masked_lm"] = "masked_lm"
        mask_token: int = Field(
            NUL,
            ge=0,
            description="the id of the [MASK] token; default 0, the NUL byte, which byte-level "
            "text never holds (with a tokenizer give its [MASK] id)",
        )
        vocab_size: int | None = Field(
            None,
            gt=0,
            description="random replacements are drawn below this id (default: 256, the bytes, "
            "for the default mask token, else mask_token)",
        )
        probability: float = Field(0.15, gt=0.0, lt=1.0)

    metric = Metric("perplexity", "test perplexity (masked tokens)", higher_is_better=False)

    def prepare(self, batch: Any, generator: torch.Generator) -> Any:
        ids = token_ids(batch)
        c = self.config
        draw = torch.rand(ids.shape, generator=generator)
        chosen = draw < c.probability
        labels = torch.where(chosen.to(ids.device), ids, torch.full_like(ids, IGNORE))
        kind = torch.rand(ids.shape, generator=generator).to(ids.device)
        masked = ids.clone()
        masked[chosen.to(ids.device) & (kind < 0.8)] = c.mask_token
        swap = chosen.to(ids.device) & (kind >= 0.8) & (kind < 0.9)
        vocab = c.vocab_size or (BYTES if c.mask_token == NUL else c.mask_token)
        random = torch.randint(vocab, ids.shape, generator=generator).to(ids.device)
        masked[swap] = random[swap]
        extra = (
            {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
            if isinstance(batch, Mapping)
            else {}
        )
        return {"input_ids": masked, "labels": labels, **extra}

    def inputs(self, batch: Any) -> Any:
        """A prepared batch's masked ids; an unprepared one (tracing, calibration) as is."""
        if isinstance(batch, Mapping):
            return {k: v for k, v in batch.items() if k != "labels"}
        return {"input_ids": batch}

    def _losses(self, output: Any, batch: Any, reduction: str) -> torch.Tensor:
        logits = logits_of(output)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            batch["labels"].reshape(-1),
            ignore_index=IGNORE,
            reduction=reduction,
        )

    def loss(self, output: Any, batch: Any) -> torch.Tensor:
        return self._losses(output, batch, "mean")

    def update(self, totals: dict[str, float], output: Any, batch: Any) -> None:
        totals["loss"] = totals.get("loss", 0.0) + float(self._losses(output, batch, "sum"))
        totals["tokens"] = totals.get("tokens", 0) + int((batch["labels"] != IGNORE).sum())

    def finish(self, totals: dict[str, float]) -> dict[str, float]:
        loss = totals["loss"] / max(totals["tokens"], 1)
        return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss}


@hookimpl
def register_tasks(register: Callable[[type], None]) -> None:
    register(Classification)
    register(CausalLM)
    register(MaskedLM)
