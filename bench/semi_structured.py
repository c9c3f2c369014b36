"""2:4 semi-structured kernels vs dense fp16 on the GPU (METHODS.md §9: measure, do not assume).

    python bench/semi_structured.py                      # Linear 4096², 8192², batch 1..4096, MLP
    python bench/semi_structured.py --sizes 4096 --batches 1 64 4096 --iters 50

Times ``F.linear`` with a dense fp16 weight against the same 2:4-masked weight converted by
``torch.sparse.to_sparse_semi_structured`` (median of CUDA-event timings after warm-up), then
an MLP exported with ``export(format="semi-structured")`` and loaded back, against its dense
masked fp16 twin. Writes a JSON next to the printed table and says "no speed-up" plainly where
the sparse kernel is not faster. Without a capable GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/semi_structured.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import write_payload  # noqa: E402

NO_SPEEDUP = 1.05  # below this ratio a sparse kernel is reported as "no speed-up"


def capability() -> tuple[int, int] | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


def time_ms(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median milliseconds per call, timed with CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def verdict(speedup: float) -> str:
    return f"{speedup:.2f}x faster" if speedup >= NO_SPEEDUP else f"no speed-up ({speedup:.2f}x)"


@torch.no_grad()
def bench_linear(size: int, batches: list[int], warmup: int, iters: int) -> list[dict[str, Any]]:
    from torch.sparse import to_sparse_semi_structured

    from compressor.plugin_api import nm_mask

    generator = torch.Generator(device="cuda").manual_seed(size)
    weight = torch.randn(size, size, device="cuda", dtype=torch.float16, generator=generator)
    weight = (weight * nm_mask(weight, 2, 4)).contiguous()
    bias = torch.zeros(size, device="cuda", dtype=torch.float16)
    sparse = to_sparse_semi_structured(weight)
    rows = []
    for batch in batches:
        x = torch.randn(batch, size, device="cuda", dtype=torch.float16, generator=generator)
        error = float((F.linear(x, sparse, bias) - F.linear(x, weight, bias)).abs().max())
        dense_ms = time_ms(lambda x=x: F.linear(x, weight, bias), warmup, iters)
        sparse_ms = time_ms(lambda x=x: F.linear(x, sparse, bias), warmup, iters)
        speedup = dense_ms / sparse_ms
        rows.append(
            {
                "case": f"Linear {size}x{size}",
                "batch": batch,
                "dense_ms": dense_ms,
                "sparse_ms": sparse_ms,
                "speedup": speedup,
                "verdict": verdict(speedup),
                "max_abs_error": error,
            }
        )
        print(
            f"  Linear {size:5d}  batch {batch:5d}  {dense_ms:8.4f} ms  {sparse_ms:8.4f} ms  "
            f"{verdict(speedup)}"
        )
    return rows


def mlp(width: int, hidden: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)]
    return nn.Sequential(*layers)


@torch.no_grad()
def bench_exported_mlp(
    width: int, hidden: int, depth: int, batches: list[int], warmup: int, iters: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from compressor.plugin_api import nm_mask
    from compressor_plugins.export.semi_structured import (
        export_semi_structured,
        load_semi_structured,
    )

    torch.manual_seed(0)
    model = mlp(width, hidden, depth)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.mul_(nm_mask(module.weight, 2, 4))
    with tempfile.TemporaryDirectory() as folder:
        path, report = export_semi_structured(model, Path(folder) / "mlp.pt")
        sparse_model = load_semi_structured(mlp(width, hidden, depth), path)
    dense_model = model.to(device="cuda", dtype=torch.float16).eval()
    rows = []
    name = f"exported MLP {depth}x({width}->{hidden}->{width})"
    for batch in batches:
        x = torch.randn(batch, width, device="cuda", dtype=torch.float16)
        error = float((sparse_model(x) - dense_model(x)).abs().max())
        dense_ms = time_ms(lambda x=x: dense_model(x), warmup, iters)
        sparse_ms = time_ms(lambda x=x: sparse_model(x), warmup, iters)
        speedup = dense_ms / sparse_ms
        rows.append(
            {
                "case": name,
                "batch": batch,
                "dense_ms": dense_ms,
                "sparse_ms": sparse_ms,
                "speedup": speedup,
                "verdict": verdict(speedup),
                "max_abs_error": error,
            }
        )
        print(
            f"  {name}  batch {batch:5d}  {dense_ms:8.4f} ms  {sparse_ms:8.4f} ms  "
            f"{verdict(speedup)}"
        )
    return rows, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096])
    parser.add_argument(
        "--mlp", type=int, nargs=3, default=[4096, 16384, 2], metavar=("WIDTH", "HIDDEN", "DEPTH")
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/semi_structured.json")
    args = parser.parse_args(argv)

    cap = capability()
    if cap is None or cap < (8, 0):
        found = "no CUDA GPU" if cap is None else f"a GPU of compute capability {cap[0]}.{cap[1]}"
        print(
            "bench/semi_structured.py needs a CUDA GPU with compute capability >= 8.0 "
            f"(to_sparse_semi_structured); this machine has {found} — nothing was measured."
        )
        return 0

    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}")
    print("  case         batch     dense fp16   2:4 sparse   result")
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        rows += bench_linear(size, args.batches, args.warmup, args.iters)
    mlp_rows, export_report = bench_exported_mlp(*args.mlp, args.batches, args.warmup, args.iters)
    rows += mlp_rows
    result = {
        "device": torch.cuda.get_device_name(),
        "capability": f"{cap[0]}.{cap[1]}",
        "torch": torch.__version__,
        "dtype": "float16",
        "timing": f"median of {args.iters} CUDA-event timings after {args.warmup} warm-up calls",
        "no_speedup_below": NO_SPEEDUP,
        "export": {k: export_report[k] for k in ("converted", "skipped")},
        "rows": rows,
    }
    write_payload(result, args.out, with_machine=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
