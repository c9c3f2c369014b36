"""SparseGPT cost (BENCHMARKS.md Q-post): compressor's operator against a plain implementation
of the published algorithm, side by side, on one linear layer.

Layer ``nn.Linear(IN, OUT)`` (default both orientations of 768×3072: 768→3072, as GPT-2's
``c_fc``, and 3072→768, as ``c_proj``) with 128 sequences × 512 tokens of calibration inputs
(65,536 columns), sparsity 0.5, block 128, damp 0.01, float32, random weights and inputs with
correlated features (seeded). Four things are measured:

* ``compressor``: the ``sparsegpt`` operator end to end, as the one-shot evaluator calls it —
  the probe pass, the forward pre-hook turning each calibration batch into ``H`` (32 sequences
  per forward, accumulated in float64), the factorisation and the sweep;
* ``plain``: the paper's Algorithm 1 (Frantar & Alistarh 2023, arXiv 2301.00774) written out
  plainly below from its pseudo-code — ``H = 2·X·Xᵀ`` from all tokens at once, ``λ = 0.01 ·
  mean(diag H)``, ``Cholesky((H + λI)⁻¹)ᵀ``, lazy blocks of B = Bs = 128, the mask of each
  block from ``w²/[H⁻¹]²_cc``, errors ``E = (1 − M)·W/[H⁻¹]_jj`` — all in float32;
* ``compressor solve`` and ``plain solve``: the same two from a given ``H`` (no calibration).

Time: wall seconds, runs alternating between the implementations, median with min–max. Peak
memory: the process's resident-set high-water mark above its level just before the call, reset
before every measurement (``/proc/self/clear_refs``; Linux), with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``, the script re-executes itself to set it) so freed buffers go back
to the system and each peak is the call's own. The inputs (the calibration tensor, the
layer) exist before either call, so neither peak counts them. Agreement: the largest absolute
difference of the two pruned weights, the share of equal mask entries, and both layer-output
errors ``||WX − ŴX||²`` relative to ``||WX||²`` (on 4,096 tokens).

    .venv/bin/python -m bench.sparsegpt_cost                  # full size (minutes)
    .venv/bin/python -m bench.sparsegpt_cost --smoke          # seconds, for CI
    .venv/bin/python -m bench.sparsegpt_cost --layers 768:3072 --repeats 5 --threads 2

Writes ``bench/results/sparsegpt_cost.json`` (``sparsegpt_cost-smoke.json``; ``--output``).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import RESULTS, machine, summary, write_payload
from compressor.host.manager import load_plugins
from compressor.plugin_api import select_targets
from compressor_plugins.posttrain.sparsegpt import sparsegpt_layer

MMAP_THRESHOLD = "65536"

# -- the plain implementation of Algorithm 1 -------------------------------------------------


def plain_hessian(x: torch.Tensor) -> torch.Tensor:
    """``H = 2·X·Xᵀ`` over all calibration tokens at once (``x``: ``[..., in]``)."""
    tokens = x.reshape(-1, x.shape[-1])
    return 2 * tokens.t() @ tokens


def plain_sparsegpt(
    w: torch.Tensor, h: torch.Tensor, p: float, block: int = 128, damp: float = 0.01
) -> torch.Tensor:
    """SparseGPT's Algorithm 1, line by line (B = Bs = ``block``), in ``w``'s dtype."""
    w = w.clone()
    rows, cols = w.shape
    h = h.clone()
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.ones_like(w, dtype=torch.bool)
    for i in range(0, cols, block):
        end = min(i + block, cols)
        e = torch.zeros(rows, end - i, dtype=w.dtype)
        for j in range(i, end):
            if j % block == 0:  # adaptive mask selection over W[:, j:j+Bs] (Bs = B)
                scores = w[:, j : j + block] ** 2 / torch.diag(hinv)[j : j + block] ** 2
                keep = round((1 - p) * scores.numel())
                top = torch.topk(scores.flatten(), keep).indices
                selected = torch.zeros(scores.numel(), dtype=torch.bool)
                selected[top] = True
                mask[:, j : j + block] = selected.view_as(scores)
            e[:, j - i] = w[:, j] / hinv[j, j]
            e[:, j - i] = (~mask[:, j]).to(w.dtype) * e[:, j - i]
            w[:, j:end] -= e[:, j - i : j - i + 1] @ hinv[j : j + 1, j:end]
        w[:, end:] -= e @ hinv[i:end, end:]
    return w * mask


# -- compressor's side -----------------------------------------------------------------------


def compressor_operator(layer: nn.Linear, x: torch.Tensor, batch: int) -> Any:
    """The registered ``sparsegpt`` operator, bound to ``layer``, calibrating on ``x``."""
    registry = load_plugins(autoload=False).registries.operators
    config = registry.get("sparsegpt").config.model_validate(
        {"kind": "sparsegpt", "calibration": {"samples": x.shape[0], "batch_size": batch}}
    )
    operator = registry.build(config)
    operator.use_calibration([x])
    operator.bind(layer, select_targets(layer), None)
    return operator


# -- measuring -------------------------------------------------------------------------------


def _status(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.M)
    return int(match.group(1)) * 1024 if match else None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
    """``(result, seconds, peak RSS above the level before the call, or None)``."""
    gc.collect()
    reset = _reset_peak()
    before = _status("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    delta = peak - before if reset and peak is not None and before is not None else None
    return result, seconds, delta


def inputs(in_features: int, sequences: int, tokens: int, seed: int) -> torch.Tensor:
    """Calibration inputs ``[sequences, tokens, in]`` with correlated features."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(in_features, in_features, generator=g) / in_features**0.5
    scale = torch.rand(in_features, generator=g) + 0.5
    x = torch.empty(sequences, tokens, in_features)
    for s in range(sequences):  # one sequence at a time: no second copy of the whole tensor
        x[s] = (torch.randn(tokens, in_features, generator=g) @ mix) * scale
    return x


def relative_error(w: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    sample = x.reshape(-1, x.shape[-1])[:4096].double()
    dense = sample @ w.double().t()
    return float(((dense - sample @ pruned.double().t()) ** 2).sum() / (dense**2).sum())


def run_layer(in_features: int, out_features: int, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    layer = nn.Linear(in_features, out_features, bias=False)
    x = inputs(in_features, args.sequences, args.tokens, args.seed)
    w = layer.weight.detach().clone()
    operator = compressor_operator(layer, x, args.batch)
    weights = {t.name: t.param for t in operator.targets}

    def ours() -> torch.Tensor:
        operator._inputs = None  # draw and split the calibration set again, as a new operator
        operator._plan = None
        (value,) = operator.project(weights, args.sparsity).values()
        return value

    def plain() -> torch.Tensor:
        return plain_sparsegpt(w, plain_hessian(x), args.sparsity)

    h = plain_hessian(x)  # float32, as the plain implementation computes it

    def ours_solve() -> torch.Tensor:
        return sparsegpt_layer(w, h.double(), args.sparsity)[0]

    def plain_solve() -> torch.Tensor:
        return plain_sparsegpt(w, h, args.sparsity)

    runs = {
        "compressor": ours,
        "plain": plain,
        "compressor solve": ours_solve,
        "plain solve": plain_solve,
    }
    results: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, int | None] = {}
    with torch.no_grad():
        for name, fn in runs.items():  # memory first, each on its own
            results[name], seconds, peaks[name] = measure(fn)
            times[name].append(seconds)
        for _ in range(args.repeats - 1):
            for name, fn in runs.items():
                _, seconds, _ = measure(fn)
                times[name].append(seconds)
    ours_w, plain_w = results["compressor"], results["plain"]
    mib = 1024 * 1024
    row: dict[str, Any] = {
        "layer": f"{in_features}->{out_features}",
        "weight_shape": [out_features, in_features],
        "calibration_tokens": [args.sequences, args.tokens],
        "sparsity": args.sparsity,
        "calibration_batch": args.batch,
        "time_s": {name: summary(values) for name, values in times.items()},
        "peak_mib": {k: None if v is None else v / mib for k, v in peaks.items()},
        "ratio_time_median": {
            "end_to_end": summary(times["compressor"])["median"]
            / summary(times["plain"])["median"],
            "solve": summary(times["compressor solve"])["median"]
            / summary(times["plain solve"])["median"],
        },
        "one_layer_state_mib": (in_features**2 * 8 + 2 * w.numel() * 4) / mib,
        "inputs_mib": x.numel() * 4 / mib,
        "agreement": {
            "max_abs_diff": float((ours_w - plain_w).abs().max()),
            "mask_equal_share": float(((ours_w == 0) == (plain_w == 0)).float().mean()),
            "sparsity": {
                "compressor": float((ours_w == 0).float().mean()),
                "plain": float((plain_w == 0).float().mean()),
            },
            "relative_output_error": {
                "compressor": relative_error(w, ours_w, x),
                "plain": relative_error(w, plain_w, x),
            },
        },
    }
    return row


def warm_up() -> None:
    """Both implementations once on a tiny layer: one-time allocations (BLAS/LAPACK
    workspaces, lazy imports) are not charged to the first measured call."""
    layer = nn.Linear(32, 16, bias=False)
    x = inputs(32, 2, 8, 0)
    with torch.no_grad():
        operator = compressor_operator(layer, x, 1)
        operator.project({t.name: t.param for t in operator.targets}, 0.5)
        plain_sparsegpt(layer.weight.detach(), plain_hessian(x), 0.5)


def parse_layer(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"a layer is IN:OUT, e.g. 768:3072, not {text!r}")
    return int(match[1]), int(match[2])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=parse_layer, nargs="+", default=None, metavar="IN:OUT")
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="sequences per calibration pass")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # see the module doc
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        os.execve(
            sys.executable, [sys.executable, "-m", "bench.sparsegpt_cost", *sys.argv[1:]], env
        )
    if args.smoke:
        args.layers = args.layers or [(64, 192), (192, 64)]
        args.sequences, args.tokens, args.batch, args.repeats = 8, 32, 4, 1
    layers = args.layers or [(768, 3072), (3072, 768)]
    torch.set_num_threads(args.threads)
    warm_up()
    rows = [run_layer(i, o, args) for i, o in layers]
    report = {
        "machine": machine(),
        "smoke": bool(args.smoke),
        "command": " ".join(["python -m bench.sparsegpt_cost", *sys.argv[1:]]),
        "settings": {
            "sequences": args.sequences,
            "tokens": args.tokens,
            "batch": args.batch,
            "sparsity": args.sparsity,
            "repeats": args.repeats,
            "threads": args.threads,
            "block": 128,
            "damp": 0.01,
        },
        "results": rows,
    }
    print(
        f"SparseGPT on one linear layer, {args.sequences}x{args.tokens} calibration tokens, "
        f"sparsity {args.sparsity:g}, {args.threads} thread(s), {args.repeats} run(s) each"
    )
    print("| layer | implementation | time median s | min–max s | peak MiB |")
    print("|---|---|---|---|---|")
    for row in rows:
        for name, t in row["time_s"].items():
            peak = row["peak_mib"][name]
            shown = "n/a" if peak is None else f"{peak:.1f}"
            print(
                f"| {row['layer']} | {name} | {t['median']:.3f} | "
                f"{t['min']:.3f}–{t['max']:.3f} | {shown} |"
            )
    for row in rows:
        agreement, ratio = row["agreement"], row["ratio_time_median"]
        err = agreement["relative_output_error"]
        print(
            f"{row['layer']}: compressor/plain time {ratio['end_to_end']:.2f} end to end, "
            f"{ratio['solve']:.2f} solve; masks equal on {agreement['mask_equal_share']:.4%}, "
            f"max |dW| {agreement['max_abs_diff']:.2e}; relative output error "
            f"{err['compressor']:.4e} vs {err['plain']:.4e}; one layer's state "
            f"{row['one_layer_state_mib']:.1f} MiB, inputs {row['inputs_mib']:.1f} MiB"
        )
    output = args.output or RESULTS / (
        "sparsegpt_cost-smoke.json" if args.smoke else "sparsegpt_cost.json"
    )
    write_payload(report, output, with_machine=False)


if __name__ == "__main__":
    main()
