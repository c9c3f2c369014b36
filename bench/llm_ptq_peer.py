"""llm-compressor's side of bench/llm_ptq.py (BENCHMARKS.md "L"), run by the peer's own venv.

This file never imports compressor: ``bench/llm_ptq.py`` runs it with the Python of the venv it
made for llm-compressor, one method per process (so the peak RSS is that method's), as

    PEER_PYTHON bench/llm_ptq_peer.py --model DIR --windows W.pt --method gptq --out OUT

It loads the local HF folder, calibrates on exactly the windows the bench gives (no shuffling,
no padding, no truncation: every window is already 256 tokens), times the ``oneshot`` call
alone, then writes plain torch weights (quantized weights replaced by their dequantized values,
so one perplexity function reads both libraries' outputs) and a JSON of the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

METHODS = ("gptq", "rtn", "sparsegpt50", "sparsegpt24", "wanda50")


def modifiers(method: str) -> list[Any]:
    """The settings of BENCHMARKS.md "L": 4-bit symmetric group 128, damp 0.01, block 128,
    LM head (and embeddings, which are not Linear) left alone; GPTQ without activation
    ordering, as compressor's GPTQ quantizes columns in their natural order."""
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    ignore = ["re:.*lm_head"]  # its pruning modifiers name the head "lm_head." (their advice)
    if method == "gptq":
        return [
            GPTQModifier(
                targets="Linear",
                scheme="W4A16",
                ignore=ignore,
                block_size=128,
                dampening_frac=0.01,
                actorder=None,
            )
        ]
    if method == "rtn":
        return [QuantizationModifier(targets="Linear", scheme="W4A16", ignore=ignore)]
    if method.startswith("sparsegpt"):
        structure = "2:4" if method.endswith("24") else "0:0"
        return [
            SparseGPTModifier(
                sparsity=0.5,
                mask_structure=structure,
                targets=["Linear"],
                ignore=ignore,
                block_size=128,
                dampening_frac=0.01,
            )
        ]
    if method == "wanda50":
        return [WandaPruningModifier(sparsity=0.5, mask_structure="0:0", ignore=ignore)]
    raise SystemExit(f"unknown method {method!r}; one of {', '.join(METHODS)}")


def dequantized_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters with every quantized weight replaced by scale·(q − zero): the
    values the quantized model computes with, as a plain state dict."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None or not hasattr(module, "weight_scale"):
            continue
        zero = getattr(module, "weight_zero_point", None)
        weight = fake_quantize(module.weight, module.weight_scale, zero, scheme.weights)
        state[f"{name}.weight"] = weight.detach().clone()
    keep = {k for k, _ in model.named_parameters()} | {k for k, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in keep and not k.endswith(("_scale", "_point"))}


class ByteWindows:
    """Stands in for a tokenizer, which llm-compressor asks for whenever it is given data."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--windows", type=Path, required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for weights.pt, peer.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    windows = torch.load(args.windows)
    # A DataLoader of ready token windows: llm-compressor then needs no tokenizer, and the
    # batches are exactly the bench's, in its order, one window per forward (its default).
    samples = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    data = torch.utils.data.DataLoader(samples, batch_size=1, shuffle=False)
    start, cpu = time.perf_counter(), time.process_time()
    oneshot(
        model=model,
        dataset=data,
        recipe=modifiers(args.method),
        num_calibration_samples=len(windows),
        max_seq_length=windows.shape[1],
        shuffle_calibration_samples=False,
        pipeline="sequential",
        processor=ByteWindows(),  # never called: the loader's batches are token ids already
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(dequantized_state(model), args.out / "weights.pt")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {
        "method": args.method,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mib": peak_kib / 1024,
    }
    (args.out / "peer.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
