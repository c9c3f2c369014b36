"""BENCHMARKS.md R: realised compression of a CIFAR-style ResNet-20 on CPU.

Rows, all from the same (untrained: latency and size do not depend on the values) ResNet-20:

* ``dense`` — the reference;
* ``channel 50%`` — the ``channel`` operator at 50% of channels per coupled group, exported
  with Torch-Pruning (:func:`compressor.plugin_api.export_pruned`): a physically
  smaller dense model;
* ``magnitude 90%`` (global unstructured) and ``2:4`` (N:M) — masks only: the model stays dense,
  its file stays the same size and its latency is unchanged on CPU, which the table shows.

Latency: every model is timed in alternation (A, B, C, A, B, C, ...) after a warm-up; medians
with min–max, speed-ups are ratios of medians against the dense row measured in the same loop.
The bar (BENCHMARKS.md R): channel 50% at least 1.7× faster at batch 1 and 1.5× at batch 64.

    python bench/realised.py            # full: 32×32 inputs, batches 1 and 64
    python bench/realised.py --smoke    # seconds: 16×16, few repeats (CI)
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.host.manager import load_plugins
from compressor.kit.channel_removal import count_macs_params
from compressor.kit.selection import select_targets
from compressor.plugin_api import (
    compare_latency,
    export_pruned,
    serialized_bytes,
)
from compressor_plugins.channel.operator import Channel
from compressor_plugins.prune.magnitude import Magnitude
from compressor_plugins.zoo.resnet import ResNetCIFAR

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/realised.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import write_payload  # noqa: E402  (after the path fix)

RESULTS = Path(__file__).parent / "results"
BARS = {1: 1.7, 64: 1.5}


def masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, mask in masks.items():
            out.get_parameter(name).mul_(mask)
    return out


def mask_sparsity(model: nn.Module) -> float:
    """Exact zeros over the eligible (conv/linear) weights."""
    targets = select_targets(model)
    zeros = sum(int((t.param == 0).sum()) for t in targets)
    return zeros / sum(t.numel for t in targets)


def two_four_masks(model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """2:4 masks from the registered ``nm`` operator when installed, else a local top-2-of-4
    along the input axis (same rule, METHODS.md §1)."""
    registries = load_plugins(autoload=False).registries
    targets = select_targets(model)
    weights = {t.name: t.param for t in targets}
    if "nm" in registries.operators:
        entry = registries.operators.get("nm")
        op = entry.cls(entry.config.model_validate({"kind": "nm", "keep": 2, "group": 4}))
        op.bind(model, targets)
        return op.masks(weights, 0.5), "nm operator"
    masks = {}
    for name, w in weights.items():
        view = w.detach().movedim(1, -1) if w.dim() > 2 else w.detach()
        if view.shape[-1] % 4:
            continue
        groups = view.abs().reshape(-1, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, groups.topk(2, dim=1).indices, True)
        keep = keep.reshape(view.shape)
        masks[name] = keep.movedim(-1, 1) if w.dim() > 2 else keep
    return masks, "local 2:4 rule (nm plugin not installed)"


def run(smoke: bool, threads: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = 16 if smoke else 32
    batches = (1, 8) if smoke else (1, 64)
    dense = ResNetCIFAR(10, 3, input_shape=(3, size, size)).eval()
    x1 = torch.zeros(1, 3, size, size)

    channel = Channel(Channel.Config(kind="channel"))  # type: ignore[call-arg]
    channel.bind(dense, select_targets(dense))
    cmasks = channel.masks({t.name: t.param for t in channel.targets}, 0.5)
    channel_masked = masked(dense, cmasks)
    small, export = export_pruned(dense, cmasks, x1)

    magnitude = Magnitude(Magnitude.Config(kind="magnitude", scope="global"))  # type: ignore[call-arg]
    magnitude.bind(dense, select_targets(dense))
    mag = masked(dense, magnitude.masks({t.name: t.param for t in magnitude.targets}, 0.9))
    nm_masks, nm_source = two_four_masks(dense)
    nm = masked(dense, nm_masks)

    models: dict[str, nn.Module] = {
        "dense": dense,
        "channel 50% (exported)": small,
        "magnitude 90% (masked, dense)": mag,
        "2:4 (masked, dense)": nm,
    }
    sparsity = {
        "dense": mask_sparsity(dense),
        "channel 50% (exported)": mask_sparsity(channel_masked),
        "magnitude 90% (masked, dense)": mask_sparsity(mag),
        "2:4 (masked, dense)": mask_sparsity(nm),
    }
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        macs, params = count_macs_params(model, x1)
        rows[name] = {
            "mask_sparsity": sparsity[name],
            "params": params,
            "nonzero_params": int(sum(int((p != 0).sum()) for p in model.parameters())),
            "macs": macs,
            "file_bytes": serialized_bytes(model.state_dict()),
            "physically_smaller": name.startswith("channel"),
            "latency_ms": {},
            "speedup": {},
            "speedup_min": {},
        }
    for batch in batches:
        x = torch.randn(batch, 3, size, size)
        timing = compare_latency(models, x, repeats=repeats)
        for name in models:
            rows[name]["latency_ms"][f"batch{batch}"] = timing[name]
            rows[name]["speedup"][f"batch{batch}"] = timing["speedup"][name]
            rows[name]["speedup_min"][f"batch{batch}"] = timing["speedup_min"][name]
    channel_row = rows["channel 50% (exported)"]
    bars = {
        f"batch{b}": {
            "bar": bar,
            "measured": channel_row["speedup"].get(f"batch{b}"),
            "met": (channel_row["speedup"].get(f"batch{b}") or 0) >= bar,
        }
        for b, bar in BARS.items()
        if f"batch{b}" in channel_row["speedup"]
    }
    return {
        "benchmark": "R realised compression (ResNet-20, CPU)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": threads,
        },
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "smoke": smoke,
        "input": [3, size, size],
        "repeats": repeats,
        "two_four_source": nm_source,
        "export_max_abs_diff": export["max_abs_diff"],
        "rows": rows,
        "bars": bars,
    }


def table(result: dict[str, Any]) -> str:
    batches = list(next(iter(result["rows"].values()))["latency_ms"])
    head = ["method", "mask sp.", "params", "MACs", "file KB"]
    head += [f"{b} ms median [min–max]" for b in batches]
    head += [f"{b} × median (min)" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in result["rows"].items():
        cells = [
            name,
            f"{row['mask_sparsity']:.1%}",
            f"{row['params'] / 1e3:.1f}k",
            f"{row['macs'] / 1e6:.2f}M",
            f"{row['file_bytes'] / 1024:.0f}",
        ]
        for b in batches:
            t = row["latency_ms"][b]
            cells.append(f"{t['median_ms']:.2f} [{t['min_ms']:.2f}–{t['max_ms']:.2f}]")
        cells += [f"{row['speedup'][b]:.2f} ({row['speedup_min'][b]:.2f})" for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "Masked rows keep every weight (zeros included): same params, MACs, file size and "
        "latency as dense on CPU — sparsity is only realised by the channel export.",
    ]
    for b, bar in result["bars"].items():
        status = "met" if bar["met"] else "NOT met"
        notes.append(
            f"bar {b}: channel ≥ {bar['bar']}× — measured {bar['measured']:.2f}× ({status})"
        )
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny and fast (CI)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per model")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.smoke else 60)
    result = run(args.smoke, args.threads, repeats)
    print(table(result))
    out = args.out or RESULTS / ("realised-smoke.json" if args.smoke else "realised.json")
    write_payload(result, out, with_machine=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
