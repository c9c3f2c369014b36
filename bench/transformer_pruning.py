"""Structured transformer pruning, realised: a Llama-style model with 50% of its feed-forward
neurons and 25% of its attention heads removed (issue 24's acceptance).

The model: 4 layers, hidden 256, 4 heads (no grouped-query attention), SwiGLU feed-forward of
``--intermediate`` (default 688 ≈ 8/3·hidden, Llama's ratio), byte-level vocabulary of 256,
random init (latency and size do not depend on the values). The ``neurons`` and ``heads``
operators (l2 score, uniform allocation) mask it one-shot; ``pruned`` export's functions cut the
dead units out and write the Hugging Face folder, which plain ``transformers`` loads
(``AutoModelForCausalLM``). Checked: the loaded model's logits equal the masked model's
(max |diff| ≤ 1e-5) and its parameter count equals the one computed from the shapes.

Latency: 16 sequences × 128 tokens, torch on one thread, dense and pruned timed alternately
(A, B, B, A, ...: ``interleaved_samples``) after a warm-up; CPU time per forward (``time.process_time``: other processes
on a shared host do not inflate it), medians with min–max; the speed-up is the ratio of
medians. The bar: ≥ 1.5×. Run it niced on a shared machine::

    nice python -m bench.transformer_pruning            # full size
    python -m bench.transformer_pruning --smoke         # seconds (CI): tiny model, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import result_path, write_payload
from compressor.kit.latency import interleaved_samples
from compressor.plugin_api import max_diff, prune_transformer, select_targets, torch_threads
from compressor_plugins.channel.transformer import Heads, Neurons
from compressor_plugins.export.transformer import hf_config, write_hf_folder
from compressor_plugins.zoo.hf import require_transformers

BAR = 1.5
NEURONS, HEADS = 0.5, 0.25


def build(layers: int, hidden: int, heads: int, intermediate: int, length: int) -> nn.Module:
    transformers = require_transformers()
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=length,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()  # type: ignore[no-any-return]


def prune_masks(model: nn.Module) -> nn.Module:
    """The masked model: neurons at 50%, heads at 25%, l2 score, uniform (in place)."""
    targets = select_targets(model)
    for cls, sparsity in ((Neurons, NEURONS), (Heads, HEADS)):
        operator = cls(cls.Config(kind=cls.UNIT, score="l2", allocation="uniform"))
        operator.bind(model, targets)
        weights = {t.name: t.param for t in operator.targets}
        with torch.no_grad():
            for name, mask in operator.masks(weights, sparsity).items():
                model.get_parameter(name).mul_(mask)
    return model


def expected_params(layers: int, hidden: int, heads: int, intermediate: int) -> int:
    """Parameters of the pruned model, from the shapes alone (no biases, untied head)."""
    head_dim = hidden // heads
    kept_heads = heads - round(HEADS * heads)
    kept_neurons = intermediate - round(NEURONS * intermediate)
    attention = 4 * hidden * kept_heads * head_dim
    mlp = 3 * hidden * kept_neurons
    per_layer = attention + mlp + 2 * hidden  # two RMSNorms
    return 2 * 256 * hidden + layers * per_layer + hidden  # embeddings, lm_head, final norm


def run(smoke: bool, repeats: int, intermediate: int) -> dict[str, Any]:
    layers, hidden, heads = (2, 64, 4) if smoke else (4, 256, 4)
    intermediate = 96 if smoke else intermediate
    batch, length = (2, 16) if smoke else (16, 128)
    dense = build(layers, hidden, heads, intermediate, length)
    masked = prune_masks(build(layers, hidden, heads, intermediate, length))
    small, found = prune_transformer(masked)
    config = hf_config(small, found["groups"], found["kept"])
    if isinstance(config, str):
        raise SystemExit(f"no HF folder: {config}")
    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()
    x = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pruned-hf"
        write_hf_folder(small, config, masked, folder, x[:2], 1e-5)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        saved = json.loads((folder / "config.json").read_text())
    diff = max_diff(loaded, masked, x)
    params = sum(p.numel() for p in loaded.parameters())
    computed = expected_params(layers, hidden, heads, intermediate)
    with torch_threads(1):
        calls = {"dense": partial(dense, x), "pruned": partial(loaded, x)}
        times = interleaved_samples(calls, repeats=repeats)
    latency = {
        name: {
            "median_ms": statistics.median(t["cpu_ms"]),
            "min_ms": min(t["cpu_ms"]),
            "max_ms": max(t["cpu_ms"]),
        }
        for name, t in times.items()
    }
    speedup = latency["dense"]["median_ms"] / latency["pruned"]["median_ms"]
    return {
        "benchmark": "structured transformer pruning (Llama-style, CPU, one thread)",
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "timing_threads": 1,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "smoke": smoke,
        "model": {
            "layers": layers,
            "hidden": hidden,
            "heads": heads,
            "intermediate": intermediate,
            "vocab": 256,
        },
        "input": [batch, length],
        "repeats": repeats,
        "pruned_config": {
            k: saved.get(k)
            for k in (
                "model_type",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "intermediate_size",
            )
        },
        "max_abs_diff": diff,
        "params": {
            "dense": sum(p.numel() for p in dense.parameters()),
            "pruned": params,
            "computed": computed,
            "equal": params == computed,
        },
        "latency_cpu_ms": latency,
        "speedup": speedup,
        "bar": {"bar": BAR, "met": speedup >= BAR},
    }


def table(result: dict[str, Any]) -> str:
    lat, params = result["latency_cpu_ms"], result["params"]
    lines = [
        "| model | params | CPU ms median [min–max] | × |",
        "|---|---|---|---|",
    ]
    for name in ("dense", "pruned"):
        t = lat[name]
        ratio = lat["dense"]["median_ms"] / t["median_ms"]
        lines.append(
            f"| {name} | {params[name] / 1e6:.3f}M | {t['median_ms']:.1f} "
            f"[{t['min_ms']:.1f}–{t['max_ms']:.1f}] | {ratio:.2f} |"
        )
    config = result["pruned_config"]
    status = "met" if result["bar"]["met"] else "NOT met"
    lines += [
        "",
        f"HF folder ({config['model_type']}: heads {config['num_attention_heads']}, kv "
        f"{config['num_key_value_heads']}, head_dim {config['head_dim']}, intermediate "
        f"{config['intermediate_size']}) loads with AutoModelForCausalLM; max |diff| to the "
        f"masked model {result['max_abs_diff']:.2g}; params {params['pruned']} "
        f"{'=' if params['equal'] else '!='} computed {params['computed']}",
        f"bar: pruned ≥ {BAR}× at {result['input'][0]}×{result['input'][1]} tokens — "
        f"measured {result['speedup']:.2f}× ({status})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per model")
    parser.add_argument("--intermediate", type=int, default=688, help="feed-forward width")
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.smoke else 12)
    result = run(args.smoke, repeats, args.intermediate)
    name = "transformer_pruning-smoke" if args.smoke else "transformer_pruning"
    write_payload(result, Path(args.out) if args.out else result_path(name))
    print(table(result))
    ok = result["max_abs_diff"] <= 1e-5 and result["params"]["equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
