"""The language-model bench's model and text (BENCHMARKS.md "L"): byte-level windows of the
Python standard library's sources, and a small Llama-style model pretrained on them once and
cached outside git as a local Hugging Face folder.

Nothing is downloaded: the text ships with Python, the model is trained here (a fixed budget,
seeded), and both are keyed by their settings so a changed setting makes a new cache entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

CACHE = Path(os.environ.get("COMPRESSOR_BENCH_CACHE", Path.home() / ".cache" / "compressor-bench"))


@dataclass(frozen=True)
class ModelSpec:
    """A byte-vocabulary Llama: the architecture and its pretraining budget."""

    blocks: int = 6
    hidden: int = 256
    heads: int = 4
    intermediate: int = 768
    steps: int = 400
    batch: int = 16
    window: int = 256
    lr: float = 1e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def stdlib_bytes(limit: int | None = None) -> bytes:
    """The standard library's ``.py`` sources in a fixed order, test folders excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not any(part in {"test", "tests", "idlelib", "site-packages"} for part in p.parts)
    )
    chunks: list[bytes] = []
    total = 0
    for path in files:
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if limit is not None and total >= limit:
            break
    return b"\n".join(chunks)


def split_text(text: bytes, held_out: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (bytes) for training and the held-out last ``held_out`` share."""
    ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(torch.long)
    cut = int(len(ids) * (1 - held_out))
    return ids[:cut], ids[cut:]


def windows(ids: torch.Tensor, count: int, length: int, seed: int) -> torch.Tensor:
    """``count`` windows of ``length`` tokens at seeded random offsets: ``[count, length]``."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (count,), generator=generator)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


def llama(spec: ModelSpec) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.blocks,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.window,
        tie_word_embeddings=False,
        use_cache=False,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


@torch.no_grad()
def perplexity(model: nn.Module, data: torch.Tensor, batch: int = 8) -> float:
    """exp(mean next-token cross-entropy) over every window of ``data`` (``[n, length]``):
    the one function that scores both libraries' outputs."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch):
        ids = data[start : start + batch]
        logits = model(input_ids=ids).logits[:, :-1]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += ids[:, 1:].numel()
    return math.exp(total / count)


def pretrained(spec: ModelSpec, *, text_limit: int | None = None, quiet: bool = False) -> Path:
    """The HF folder of ``spec`` trained on the stdlib text; trained once, then read from the
    cache."""
    folder = CACHE / "llm_ptq" / f"llama-{spec.key()}"
    if (folder / "config.json").exists():
        return folder
    train_ids, _ = split_text(stdlib_bytes(text_limit))
    model = llama(spec)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, spec.lr, total_steps=spec.steps)
    generator = torch.Generator().manual_seed(spec.seed)
    began = time.perf_counter()
    for step in range(spec.steps):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        ids = windows(train_ids, spec.batch, spec.window, seed)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if not quiet and (step % 50 == 0 or step == spec.steps - 1):
            elapsed = time.perf_counter() - began
            print(
                f"  pretrain step {step + 1}/{spec.steps}: loss {float(loss.detach()):.3f} ({elapsed:.0f} s)"
            )
    staging = folder.with_name(folder.name + ".partial")
    model.save_pretrained(staging)
    (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    staging.rename(folder)
    return folder
