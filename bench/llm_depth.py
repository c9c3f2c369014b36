"""Calibration time against depth (issue 23): the block pipeline is linear in the blocks.

A Llama-style model from a random-init config (hidden 256, MLP 688, 8 heads / 4 KV heads,
vocabulary 512; nothing downloaded) with N and 2N decoder blocks; 32 calibration windows of 128
tokens, batches of 8, one thread. For each method (SparseGPT 50%, GPTQ 4-bit g128, Wanda 50%)
and each ``sequential`` mode the operator is built, calibrated and solved end to end (LM head
dense, as by default); CPU seconds of the process (``time.process_time``: on a shared machine
wall time also counts other processes; both are recorded), median of ``--repeats``. The ratio
``t(2N) / t(N)`` of CPU seconds is the figure: 2 is linear, 4 quadratic (issue 23's target: at
most 2.2).

    .venv/bin/python -m bench.llm_depth                  # N = 6 (minutes)
    .venv/bin/python -m bench.llm_depth --smoke          # seconds, for CI

Writes ``bench/results/llm_depth.json`` (``llm_depth-smoke.json``; ``--output``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import RESULTS, machine, summary
from compressor.host.manager import load_plugins
from compressor.plugin_api import select_targets

METHODS: dict[str, dict[str, Any]] = {
    "sparsegpt 0.5": {"kind": "sparsegpt"},
    "gptq int4 g128": {"kind": "gptq", "bits": 4, "group_size": 128},
    "wanda 0.5": {"kind": "wanda"},
}


def llama(blocks: int, hidden: int, seed: int = 0) -> nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=hidden * 43 // 16,
        num_hidden_layers=blocks,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def windows(count: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 512, (count, length), generator=torch.Generator().manual_seed(seed))


def compress_seconds(
    model: nn.Module, method: dict[str, Any], sequential: str, ids: torch.Tensor, batch: int
) -> tuple[float, float]:
    """``(CPU seconds, wall seconds)`` of building, calibrating and solving the operator."""
    registry = load_plugins(autoload=False).registries.operators
    calibration = {"samples": ids.shape[0], "batch_size": batch, "sequential": sequential}
    config = registry.get(method["kind"]).config.model_validate(
        {**method, "calibration": calibration}
    )
    start, cpu = time.perf_counter(), time.process_time()
    operator = registry.build(config)
    operator.use_calibration([{"input_ids": ids}])
    targets = select_targets(model, exclude=["lm_head.weight"])
    operator.bind(model, targets, None)
    fixed = operator.fixed_sparsity()
    operator.project({t.name: t.param for t in targets}, 0.5 if fixed is None else fixed)
    return time.process_time() - cpu, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6, help="N (the deep model has 2N)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.blocks, args.hidden, args.windows, args.tokens, args.batch = 2, 64, 4, 32, 2
    torch.set_num_threads(args.threads)
    ids = windows(args.windows, args.tokens, 1)
    rows = []
    print("| method | sequential | N | CPU t(N) s | CPU t(2N) s | ratio | wall ratio |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for label, method in METHODS.items():
            for sequential in ("block", "exact"):
                times: dict[int, list[float]] = {}
                walls: dict[int, list[float]] = {}
                for blocks in (args.blocks, 2 * args.blocks):
                    model = llama(blocks, args.hidden)
                    runs = [
                        compress_seconds(model, method, sequential, ids, args.batch)
                        for _ in range(args.repeats)
                    ]
                    times[blocks] = [cpu for cpu, _ in runs]
                    walls[blocks] = [wall for _, wall in runs]
                short = summary(times[args.blocks])
                deep = summary(times[2 * args.blocks])
                ratio = deep["median"] / short["median"]
                wall = (
                    summary(walls[2 * args.blocks])["median"]
                    / summary(walls[args.blocks])["median"]
                )
                rows.append(
                    {
                        "method": label,
                        "sequential": sequential,
                        "blocks": args.blocks,
                        "time_s": {"N": short, "2N": deep},
                        "wall_s": {
                            "N": summary(walls[args.blocks]),
                            "2N": summary(walls[2 * args.blocks]),
                        },
                        "ratio": ratio,
                        "wall_ratio": wall,
                    }
                )
                print(
                    f"| {label} | {sequential} | {args.blocks} | {short['median']:.2f} | "
                    f"{deep['median']:.2f} | {ratio:.2f} | {wall:.2f} |"
                )
    name = "llm_depth-smoke" if args.smoke else "llm_depth"
    output = args.output or RESULTS / f"{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "smoke": args.smoke, "settings": vars(args) | {"output": None}}
    output.write_text(json.dumps({**payload, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
