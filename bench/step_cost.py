"""Step cost of SAM and CrAM+ relative to SGD (BENCHMARKS.md S).

Same model, batch and random inputs for every method; steps are timed interleaved in one
process (the method order rotates every round) so the shared machine's noise hits all methods
alike. Wall time and process CPU time are both recorded: with one thread, CPU time is far
less disturbed by other jobs on a shared machine. Prints medians with min-max and writes
``bench/results/step_cost.json``.

    python bench/step_cost.py            # full: MNIST-1D CNN and ResNet-20, batch 128
    python bench/step_cost.py --smoke    # seconds: tiny batch, few rounds (CI)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressor import Session
from compressor.recipe.schema import recipe_from_text
from compressor_plugins.zoo.models import MNIST1DCNN

RESULTS = Path(__file__).resolve().parent / "results" / "step_cost.json"

OPTIMIZER = "{name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}"
METHODS: dict[str, str | None] = {
    "sgd": None,
    "sam": "{name: sam, rho: 0.05}",
    "cram+": "{name: cram, rho: 0.05, plus: true, sparsities: [0.5, 0.7, 0.9]}",
}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, widths 16/32/64."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20() -> nn.Module:
    try:  # the project's own ResNet-20 when the plugin exists
        from compressor_plugins.zoo import resnet as resnet  # type: ignore[attr-defined]

        return resnet.ResNet20(num_classes=10)  # type: ignore[no-any-return]
    except (ImportError, AttributeError, TypeError):
        return ResNet20()


def make_stepper(
    model: nn.Module, wrapper: str | None, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    text = f"name: bench\nmodel: {{name: mlp}}\ndata: {{name: synthetic}}\noptimizer: {OPTIMIZER}\n"
    if wrapper is not None:
        text += f"wrapper: {wrapper}\n"
    session = Session(model, recipe_from_text(text), steps_per_epoch=1000)
    optimizer = session.optimizer()

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def step() -> None:
        loss = optimizer.step(closure)
        session.step_end(loss.detach())

    return step


def mask_cost(model: nn.Module, repeats: int) -> float:
    """Median seconds of one global magnitude mask over the model's prunable weights."""
    text = "name: m\nmodel: {name: mlp}\ndata: {name: synthetic}\noptimizer: {name: sgd}\n"
    session = Session(model, recipe_from_text(text), steps_per_epoch=1)
    operator = session.build_operator(
        session.registries.operators.get("magnitude").cls.Config(kind="magnitude")
    )
    weights = {t.name: t.param for t in operator.targets}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        operator.masks(weights, 0.9)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(
    label: str,
    build: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    *,
    batch: int,
    rounds: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    torch.manual_seed(0)
    base = build().to(device)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steppers = {m: make_stepper(copy.deepcopy(base), w, x, y) for m, w in METHODS.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steppers.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    names = list(METHODS)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for method in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                steppers[method]()
            sync()
            times[method].append((time.perf_counter() - start) / steps)
            cpu[method].append((time.process_time() - start_cpu) / steps)
    out: dict[str, Any] = {
        "model": label,
        "params": sum(p.numel() for p in base.parameters()),
        "mask_s": mask_cost(copy.deepcopy(base).cpu(), 5) if device.type == "cpu" else None,
    }
    for method in names:
        out[method] = {
            "wall": summarise(times[method], times["sgd"]),
            "cpu": summarise(cpu[method], cpu["sgd"]),
        }
    return out


def summarise(samples: list[float], baseline: list[float]) -> dict[str, float]:
    """Median and min-max of the per-round times and of the per-round ratios to SGD."""
    ratios = [t / b for t, b in zip(samples, baseline, strict=True)]
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_of_medians": statistics.median(samples) / statistics.median(baseline),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny and fast (CI)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["mnist1d_cnn", "resnet20"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    smoke = args.smoke
    batch = 8 if smoke else 128
    settings = {
        "mnist1d_cnn": dict(rounds=args.rounds or (2 if smoke else 30), steps=1 if smoke else 5),
        "resnet20": dict(rounds=args.rounds or (2 if smoke else 15), steps=1),
    }
    models = {
        "mnist1d_cnn": (lambda: MNIST1DCNN(40, 10, 8 if smoke else 64), (40,)),
        "resnet20": (resnet20, (3, 32, 32)),
    }
    rows = []
    for label in args.models:
        build, shape = models[label]
        cfg = settings[label]
        rows.append(
            bench_model(
                label,
                build,
                shape,
                batch=batch,
                rounds=int(cfg["rounds"]),
                steps=int(cfg["steps"]),
                warmup=1 if smoke else 3,
                device=device,
            )
        )
    print(
        f"{'model':<12} {'method':<6} {'wall ms':>9} {'min-max':>14} {'wall x SGD':>18}"
        f" {'cpu ms':>9} {'cpu x SGD':>18}"
    )
    for row in rows:
        for method in METHODS:
            w, c = row[method]["wall"], row[method]["cpu"]
            print(
                f"{row['model']:<12} {method:<6} {w['median_s'] * 1e3:>9.2f}"
                f" {w['min_s'] * 1e3:>6.1f}-{w['max_s'] * 1e3:<7.1f}"
                f" {w['ratio_median']:>6.3f} ({w['ratio_min']:.2f}-{w['ratio_max']:.2f})"
                f" {c['median_s'] * 1e3:>9.2f}"
                f" {c['ratio_median']:>6.3f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f})"
            )
        if row["mask_s"] is not None:
            print(f"{row['model']:<12} one global magnitude mask: {row['mask_s'] * 1e3:.2f} ms")
    report = {
        "benchmark": "step_cost",
        "smoke": smoke,
        "batch": batch,
        "threads": args.threads,
        "device": str(device),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "methods": METHODS,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
