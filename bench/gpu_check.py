"""The GPU check (issue 16): 2:4 kernels, CUDA training steps and mixed precision, measured.

    bash bench/gpu_check.sh                  # on the GPU machine: offline install, CUDA tests, this
    python bench/gpu_check.py --out DIR      # this script alone
    python bench/gpu_check.py --cpu-smoke    # without a GPU: every CUDA section skipped with
                                             # its reason, the step and training code run tiny on CPU

Three sections, each skipped with its reason when it cannot run, all written to
``DIR/gpu_check.json`` (default ``bench/results/gpu``):

* ``semi_structured`` — the Linear layers of a transformer MLP block (4096×4096, 4096→11008,
  11008→4096), fp16 and bf16, 1/16/256 sequences × 2048 tokens, each 2:4-masked weight
  converted by ``torch.sparse.to_sparse_semi_structured`` with CUTLASS and with cuSPARSELt
  (where available): the largest deviation from the masked dense layer (relative to the
  output's largest magnitude) and the median CUDA-event time of each against dense. A
  speed-up under 1.05 is reported as none.
* ``steps`` — SGD, SAM and CrAM+ Multi steps of a ResNet-50 (torchvision, random init;
  ResNet-20 without torchvision) on one batch under bf16 autocast, timed side by side in one
  process, rounds interleaved; and ``bench/step_cost.py``'s fp32 ResNet-20 comparison, with
  the released reference implementations when ``--sam-repo``/``--cram-repo`` are given.
* ``precision`` — the Q protocol's CrAM+ Multi recipe trained on CUDA in fp32, bf16 and fp16
  (gradient scaler), seed 0: test accuracy and one-shot accuracy at 90/95%, and whether bf16
  and fp16 are within ``NOISE`` points of fp32.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.semi_structured import time_ms  # noqa: E402

NO_SPEEDUP = 1.05
NOISE = 1.0
"""Points of test accuracy: the seed-to-seed spread of the Q protocol on CPU (BENCHMARKS.md Q)
is about 0.3-0.6; a precision further than this from fp32 on the same seed is flagged."""
RECIPE = ROOT / "recipes" / "cram-plus-multi-mnist1d.yaml"
METHODS = {
    "sgd": None,
    "sam": "{name: sam, rho: 0.05}",
    "cram+": "{name: cram, plus: true, rho: 0.02, sparse_grad: true, "
    "operator: {kind: magnitude, scope: global}, sparsities: [0.7, 0.8, 0.9, 0.95]}",
}


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


def cuda_reason(minimum: tuple[int, int] | None = None) -> str | None:
    """Why a CUDA section cannot run here (None: it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    capability = torch.cuda.get_device_capability()
    if minimum is not None and capability < minimum:
        return f"compute capability {capability} < {minimum}"
    return None


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask along the input axis: the 2 largest magnitudes of every 4."""
    groups = weight.abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape)


# -- 2:4 -----------------------------------------------------------------------------------------


def semi_structured(quick: bool) -> dict[str, Any]:
    reason = cuda_reason((8, 0))
    if reason:
        return skipped(reason + "; 2:4 kernels need an Ampere or newer GPU")
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    backends = ["cutlass"]
    if getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.is_available():
        backends.append("cusparselt")
    shapes = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): attention, up, down
    sequences = [1, 16] if quick else [1, 16, 256]
    rows: list[dict[str, Any]] = []
    generator = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        for out_features, in_features in shapes:
            weight = torch.randn(
                out_features, in_features, device="cuda", dtype=dtype, generator=generator
            )
            dense = weight * two_four(weight)
            sparse: dict[str, Any] = {}
            for backend in backends:
                SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
                try:
                    sparse[backend] = to_sparse_semi_structured(dense)
                except Exception as exc:  # noqa: BLE001 — reported, the others still run
                    sparse[backend] = f"{type(exc).__name__}: {exc}"
            for count in sequences:
                tokens = count * 2048
                x = torch.randn(
                    tokens, in_features, device="cuda", dtype=dtype, generator=generator
                )
                reference = F.linear(x, dense)
                iters = 5 if tokens * in_features * out_features > 1e13 else 20
                dense_ms = time_ms(lambda x=x, dense=dense: F.linear(x, dense), 3, iters)
                row: dict[str, Any] = {
                    "dtype": str(dtype).removeprefix("torch."),
                    "out_features": out_features,
                    "in_features": in_features,
                    "tokens": tokens,
                    "dense_ms": dense_ms,
                }
                for backend, w in sparse.items():
                    if isinstance(w, str):
                        row[backend] = {"error": w}
                        continue
                    try:
                        out = F.linear(x, w)
                        scale = reference.abs().max().item()
                        deviation = (out - reference).abs().max().item() / max(scale, 1e-12)
                        ms = time_ms(lambda w=w, x=x: F.linear(x, w), 3, iters)
                    except Exception as exc:  # noqa: BLE001
                        row[backend] = {"error": f"{type(exc).__name__}: {exc}"}
                        continue
                    speedup = dense_ms / ms
                    row[backend] = {
                        "class": type(w).__name__,
                        "ms": ms,
                        "speedup": speedup,
                        "verdict": f"{speedup:.2f}x" if speedup >= NO_SPEEDUP else "no speed-up",
                        "max_rel_deviation": deviation,
                        "matches": deviation < (1e-2 if dtype == torch.float16 else 3e-2),
                    }
                rows.append(row)
                del x, reference
            torch.cuda.empty_cache()
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return {"backends": backends, "rows": rows}


# -- training steps ------------------------------------------------------------------------------


def stepper(
    model: nn.Module, wrapper: str | None, x: torch.Tensor, y: torch.Tensor, autocast: bool
) -> Callable[[], None]:
    from compressor.engine.session import Session
    from compressor.recipe.schema import recipe_from_text

    text = "name: gpu-step\noptimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}\n"
    if wrapper is not None:
        text += f"wrapper: {wrapper}\n"
    session = Session(model, recipe_from_text(text), steps_per_epoch=1000)
    optimizer = session.optimizer()
    kind = x.device.type

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def step() -> None:
        session.step_end(optimizer.step(closure).detach())

    return step


def resnet(device: torch.device, cpu_smoke: bool) -> tuple[str, nn.Module, tuple[int, ...]]:
    if cpu_smoke:  # the code path only: a tiny convolutional net
        tiny = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
        )  # fmt: skip
        return "tiny-cnn (CPU smoke)", tiny, (3, 8, 8)
    try:
        import torchvision

        return "resnet50", torchvision.models.resnet50(num_classes=1000), (3, 224, 224)
    except ImportError:
        from bench.step_models import resnet20

        return "resnet20 (no torchvision)", resnet20(), (3, 32, 32)


def steps(quick: bool, cpu_smoke: bool, refs: list[str]) -> dict[str, Any]:
    reason = None if cpu_smoke else cuda_reason()
    if reason:
        return skipped(reason)
    device = torch.device("cpu" if cpu_smoke else "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    label, base, shape = resnet(device, cpu_smoke)
    batch = 4 if cpu_smoke else (128 if quick else 256)
    rounds, per_round, warmup = (2, 1, 1) if cpu_smoke else (5, 5, 3)
    torch.manual_seed(0)
    base = base.to(device, memory_format=torch.channels_last if not cpu_smoke else None)
    x = torch.randn(batch, *shape, device=device)
    if not cpu_smoke:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    steppers = {m: stepper(copy.deepcopy(base), w, x, y, True) for m, w in METHODS.items()}
    for step in steppers.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {m: [] for m in steppers}
    names = list(steppers)
    for r in range(rounds):
        for method in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(per_round):
                steppers[method]()
            sync()
            times[method].append((time.perf_counter() - start) / per_round)
    out: dict[str, Any] = {"model": label, "batch": batch, "autocast": "bf16", "methods": {}}
    for method in names:
        ratios = [t / b for t, b in zip(times[method], times["sgd"], strict=True)]
        out["methods"][method] = {
            "ms_median": 1000 * statistics.median(times[method]),
            "vs_sgd_median": statistics.median(ratios),
            "vs_sgd_min": min(ratios),
            "vs_sgd_max": max(ratios),
        }
    if device.type == "cuda":
        out["memory_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["fp32_resnet20"] = step_cost_fp32(quick, refs)
    return out


def step_cost_fp32(quick: bool, refs: list[str]) -> dict[str, Any]:
    """bench/step_cost.py on CUDA (fp32 ResNet-20, batch 128), with any reference given."""
    result = ROOT / "bench" / "results" / "step_cost-cuda.json"
    command = [sys.executable, str(ROOT / "bench" / "step_cost.py"), "--device", "cuda"]
    command += ["--models", "resnet20", "--rounds", "5" if quick else "20", "--output", str(result)]
    done = subprocess.run(command + refs, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return dict(json.loads(result.read_text()))


# -- mixed precision training -------------------------------------------------------------------


def precision(quick: bool, cpu_smoke: bool, out: Path) -> dict[str, Any]:
    reason = None if cpu_smoke else cuda_reason()
    if reason:
        return skipped(reason)
    device = "cpu" if cpu_smoke else "cuda"
    sets = [f"train.device={device}"]
    if cpu_smoke:
        sets += ["data.samples=200", "model.width=8", "train.epochs=1"]
        sets += ["evaluate.oneshot.sparsities=[0.9, 0.95]"]
        sets += ["evaluate.oneshot.bn_recalibration.batches=2"]
        sets += ["evaluate.oneshot.bn_recalibration.calibration_samples=100"]
    elif quick:
        sets += ["train.epochs=5"]
    results: dict[str, Any] = {"device": device, "recipe": str(RECIPE.relative_to(ROOT))}
    precisions = ["fp32", "bf16"] if cpu_smoke else ["fp32", "bf16", "fp16"]
    for name in precisions:
        run_dir = out / f"cram-plus-{name}"
        command = [sys.executable, "-m", "compressor.cli", "run", str(RECIPE), "--out"]
        command += [str(run_dir), "--overwrite"]
        for item in [*sets, f"train.precision={name}"]:
            command += ["--set", item]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=ROOT)
        if done.returncode != 0:
            results[name] = {"error": done.stderr[-2000:]}
            continue
        report = json.loads((run_dir / "report.json").read_text())
        oneshot = report["evaluations"]["oneshot"]["metrics"]
        results[name] = {
            "test_accuracy": report["metrics"]["test_accuracy"],
            "oneshot_0.9": oneshot.get("0.9"),
            "oneshot_0.95": oneshot.get("0.95"),
            "skipped_steps": report.get("skipped_steps"),
            "train_time_s": report.get("train_time_s"),
            "wall_s": time.perf_counter() - started,
        }
    base = results.get("fp32", {})
    for name in precisions[1:]:
        row = results.get(name, {})
        if "test_accuracy" in row and "test_accuracy" in base:
            gap = 100 * (row["test_accuracy"] - base["test_accuracy"])
            row["vs_fp32_points"] = gap
            row["within_noise"] = abs(gap) <= NOISE
    return results


# -- driver --------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["capability"] = list(torch.cuda.get_device_capability())
        cusparselt = getattr(torch.backends, "cusparselt", None)
        info["cusparselt"] = bool(cusparselt and cusparselt.is_available())
    return info


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One section; a crash is recorded with its traceback and the next section still runs."""
    started = time.perf_counter()
    print(f"[gpu_check] {name} ...", flush=True)
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 — a broken section must not lose the others
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - started
    print(f"[gpu_check] {name}: {json.dumps(result)[:400]}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and epochs")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run the step/training code on CPU"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "compressor-gpu-check",
        help="run folders of the precision section (kept out of --out: only the JSON returns)",
    )
    parser.add_argument("--sam-repo", type=Path, help="the SAM reference checkout (step_cost.py)")
    parser.add_argument("--cram-repo", type=Path, help="the CrAM reference checkout")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    refs: list[str] = []
    for option, path in (("--sam-repo", args.sam_repo), ("--cram-repo", args.cram_repo)):
        if path is not None and path.is_dir():
            refs += [option, str(path)]
    report = {
        "benchmark": "gpu_check",
        "environment": environment(),
        "semi_structured": guarded("semi_structured", lambda: semi_structured(args.quick)),
        "steps": guarded("steps", lambda: steps(args.quick, args.cpu_smoke, refs)),
        "precision": guarded("precision", lambda: precision(args.quick, args.cpu_smoke, args.work)),
    }
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    failed = [
        name for name, section in report.items() if isinstance(section, dict) and "error" in section
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
