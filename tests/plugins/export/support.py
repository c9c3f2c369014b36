"""Tiny Hugging Face runs for the export tests: random-init models from configs, a byte corpus
written to tmp, trained a few steps through ``compressor run`` (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

from compressor.cli.main import main

LLAMA = (
    "{name: hf, architecture: LlamaForCausalLM, config: {hidden_size: HIDDEN, "
    "intermediate_size: INTER, num_hidden_layers: 2, num_attention_heads: 4, "
    "num_key_value_heads: 2, max_position_embeddings: 64}}"
)
GPT2 = "{name: hf, architecture: GPT2LMHeadModel, config: {n_layer: 2, n_embd: 32, n_head: 2}}"


def llama(hidden: int = 64, inter: int = 128) -> str:
    return LLAMA.replace("HIDDEN", str(hidden)).replace("INTER", str(inter))


def write_corpus(path: Path, size: int = 4096) -> Path:
    generator = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(97, 123, (size,), generator=generator).tolist()))
    return path


def hf_run(
    root: Path,
    model: str,
    body: str = "",
    *,
    name: str = "run",
    epochs: int = 1,
    batch_size: int = 16,
) -> Path:
    """Train ``model`` on a byte corpus in ``root`` and return the run folder."""
    corpus = write_corpus(root / "corpus.txt")
    recipe = root / f"{name}.yaml"
    recipe.write_text(
        f"name: {name}\nmodel: {model}\n"
        f"data: {{name: text, path: {corpus}, block_size: 16, batch_size: {batch_size}}}\n"
        f"train: {{epochs: {epochs}, seed: 0}}\n"
        "optimizer: {name: adamw, lr: 1.0e-3}\n" + body
    )
    out = root / name
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    return out


def export(run: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["export", str(run), "--format", fmt, "--out", str(out), *extra])
