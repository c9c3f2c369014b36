"""Step cost of amortised SAM and CrAM+ (``every: k``, issue 15) relative to SGD, side by side.

The methods are SGD, and SAM and CrAM+ Multi at k = 1, 2, 5, 10 (``every: k``; k = 1 is the
full method), with bench/step_cost.py's model, hyperparameters, batch and stepper: same initial
weights and inputs for all. One round times every method for ``steps`` consecutive steps, a
multiple of 10 so each covers whole cycles of every k (a k-cycle costs one full step and k - 1
reusing ones), the order rotating from round to round; per-round ratios to that round's SGD,
in process CPU time (with one thread far less disturbed by other jobs than wall time) and in
wall time. Prints medians with min-max and writes ``bench/results/amortised_cost.json``
(``amortised_cost-smoke.json`` with ``--smoke``).

The bar (issue 15): CrAM+ at k = 5 <= 1.3x SGD (CPU-time ratio, median of rounds) on the
MNIST-1D CNN. The floor is 1.2 (one forward and backward per step, plus a second pair every
fifth step); the rest is the reuse arithmetic and CrAM's mask on full steps.

    python -m bench.amortised_cost                      # MNIST-1D CNN and ResNet-20
    python -m bench.amortised_cost --models mnist1d_cnn
    python -m bench.amortised_cost --smoke              # seconds (CI)
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/amortised_cost.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import write_payload  # noqa: E402
from bench.step_cost import RESULTS, summarise  # noqa: E402
from bench.step_models import resnet20  # noqa: E402
from bench.step_setup import CRAM_SPARSITIES, METHODS, cram_wrapper, make_stepper  # noqa: E402
from compressor_plugins.zoo.models import MNIST1DCNN  # noqa: E402

KS = [1, 2, 5, 10]
BAR = ("cram+ k=5", 1.3)  # issue 15: k = 5 at most 1.3x SGD


def with_every(wrapper: str, k: int) -> str:
    return wrapper[:-1] + f", every: {k}}}"


WRAPPERS: dict[str, str | None] = {"sgd": None}
for _k in KS:
    WRAPPERS[f"sam k={_k}"] = with_every(str(METHODS["sam"]), _k)
for _k in KS:
    WRAPPERS[f"cram+ k={_k}"] = with_every(cram_wrapper(CRAM_SPARSITIES), _k)


def bench_model(
    label: str,
    build: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    *,
    batch: int,
    rounds: int,
    steps: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    base = build()
    x = torch.randn(batch, *input_shape)
    y = torch.randint(0, 10, (batch,))
    steppers = {m: make_stepper(copy.deepcopy(base), w, x, y) for m, w in WRAPPERS.items()}
    names = list(steppers)
    for step in steppers.values():  # one whole cycle each, so every round starts a cycle
        for _ in range(steps):
            step()
    wall: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
    for r in range(rounds):
        for method in names[r % len(names) :] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                steppers[method]()
            wall[method].append((time.perf_counter() - start) / steps)
            cpu[method].append((time.process_time() - start_cpu) / steps)
    out: dict[str, Any] = {"model": label, "params": sum(p.numel() for p in base.parameters())}
    for method in names:
        wrapper = steppers[method].optimizer.base  # type: ignore[attr-defined]
        out[method] = {
            "cpu": summarise(cpu[method], cpu["sgd"]),
            "wall": summarise(wall[method], wall["sgd"]),
            "second_passes": getattr(wrapper, "second_passes", None),
            "steps": getattr(wrapper, "steps", None),
        }
    return out


def print_table(rows: list[dict[str, Any]], smoke: bool) -> None:
    print(
        f"{'model':<12} {'method':<11} {'pass 2/steps':>12} {'cpu ms':>8} {'cpu x SGD':>18}"
        f" {'wall ms':>8} {'wall x SGD':>18}"
    )
    for row in rows:
        for method in WRAPPERS:
            c, w = row[method]["cpu"], row[method]["wall"]
            passes = row[method]["second_passes"]
            counts = "—" if passes is None else f"{passes}/{row[method]['steps']}"
            print(
                f"{row['model']:<12} {method:<11} {counts:>12} {c['median_s'] * 1e3:>8.2f}"
                f" {c['ratio_median']:>6.3f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f})"
                f" {w['median_s'] * 1e3:>8.2f}"
                f" {w['ratio_median']:>6.3f} ({w['ratio_min']:.2f}-{w['ratio_max']:.2f})"
            )
    method, bar = BAR
    for row in rows:
        ratio = row[method]["cpu"]["ratio_median"]
        verdict = "met" if ratio <= bar else "not met"
        verdict += " (smoke: not a measurement)" if smoke else ""
        print(f"{row['model']:<12} bar {method} <= {bar}x SGD (cpu): {ratio:.3f}, {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny and fast (CI)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["mnist1d_cnn", "resnet20"])
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    smoke = args.smoke
    batch = 8 if smoke else 128
    rounds = {"mnist1d_cnn": 2 if smoke else 40, "resnet20": 2 if smoke else 8}
    models = {
        "mnist1d_cnn": (lambda: MNIST1DCNN(40, 10, 8 if smoke else 64), (40,)),
        "resnet20": (resnet20, (3, 8, 8) if smoke else (3, 32, 32)),
    }
    rows = []
    for label in args.models:
        build, shape = models[label]
        rows.append(
            bench_model(
                label, build, shape, batch=batch, rounds=args.rounds or rounds[label], steps=10
            )  # fmt: skip
        )
    print_table(rows, smoke)
    report = {
        "benchmark": "amortised_cost",
        "smoke": smoke,
        "batch": batch,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "methods": WRAPPERS,
        "steps_per_round": 10,
        "bar": {"method": BAR[0], "cpu_ratio_at_most": BAR[1]},
        "results": rows,
    }
    output = args.output or RESULTS / (
        "amortised_cost-smoke.json" if smoke else "amortised_cost.json"
    )
    write_payload(report, output, with_machine=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
