"""Global magnitude mask speed: the magnitude operator versus ``torch.kthvalue``.

25M weights in 50 tensors, target sparsity 0.9. The baseline concatenates the magnitudes and
thresholds at ``torch.kthvalue``; the operator finds the same threshold by histogram-then-select
without concatenating. Both must keep exactly the same weights (checked). Runs alternate; the
ratio of medians is reported with min–max. Bar (BENCHMARKS.md S): >= 2.5x.

    .venv/bin/python -m bench.mask_speed [--repeats 5] [--threads 1] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import result_path, summary, write_payload
from compressor.plugin_api import keep_count
from compressor_plugins.prune.magnitude import Magnitude


def baseline(weights: dict[str, torch.Tensor], sparsity: float) -> torch.Tensor:
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    n = flat.numel()
    threshold = torch.kthvalue(flat, n - keep_count(n, sparsity)).values
    return flat > threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument("--per-tensor", type=int, default=500_000)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.tensors, args.per_tensor, args.repeats = 4, 100_000, 1
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    weights = {
        f"layer{i}.weight": torch.randn(args.per_tensor, generator=g) for i in range(args.tensors)
    }
    operator = Magnitude(Magnitude.Config(kind="magnitude"))
    ours = torch.cat([m.flatten() for m in operator.masks(weights, args.sparsity).values()])
    exact = torch.equal(ours, baseline(weights, args.sparsity))
    times: dict[str, list[float]] = {"kthvalue": [], "operator": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        baseline(weights, args.sparsity)
        times["kthvalue"].append(time.perf_counter() - start)
        start = time.perf_counter()
        operator.masks(weights, args.sparsity)
        times["operator"].append(time.perf_counter() - start)
    ratios = [k / o for k, o in zip(times["kthvalue"], times["operator"], strict=True)]
    result = {
        "weights": args.tensors * args.per_tensor,
        "tensors": args.tensors,
        "sparsity": args.sparsity,
        "threads": args.threads,
        "exact": exact,
        "kthvalue_s": summary(times["kthvalue"]),
        "operator_s": summary(times["operator"]),
        "speedup": statistics.median(times["kthvalue"]) / statistics.median(times["operator"]),
        "pairwise_speedup": summary(ratios),
        "bar": 2.5,
    }
    print(
        f"{result['weights']:,} weights in {args.tensors} tensors, sparsity {args.sparsity}, {args.threads} thread(s)"
    )
    print("| method | median s | min–max s |\n|---|---|---|")
    for name in ("kthvalue", "operator"):
        s = result[f"{name}_s"]
        print(f"| {name} | {s['median']:.3f} | {s['min']:.3f}–{s['max']:.3f} |")
    p = result["pairwise_speedup"]
    print(
        f"\nexact: {exact}; speed-up {result['speedup']:.2f}x (pairwise {p['min']:.2f}–{p['max']:.2f}); bar >= 2.5x"
    )
    write_payload(result, result_path("mask_speed-smoke" if args.smoke else "mask_speed"))
    if not exact:
        raise SystemExit("the operator's mask differs from the kthvalue mask")


if __name__ == "__main__":
    main()
