"""D — deployment in ONNX Runtime (BENCHMARKS.md D; issue 22).

Two halves, one result file (``bench/results/deploy.json``):

* **speed** (ResNet-20, the model of ``recipes/channel-resnet20.yaml``, CIFAR-shaped inputs):
  torch eager fp32, ONNX Runtime fp32, ONNX Runtime static int8 (W8A8 QDQ, per-channel
  weights) and the 50%-channel-pruned model (the ``channel`` operator's masks with
  ``round_to: 8``, exported as the physically smaller graph) in fp32 and int8, and the model
  with 90% unstructured (global magnitude) zeros in fp32 ORT — all in this process, one
  thread, timed in alternation at batch 1 and 64; medians of process CPU time (wall medians
  beside them). torch runs with glibc's malloc thresholds fixed (``reuse_freed_memory``):
  with glibc's defaults its batch-64 forwards fault their activations in afresh and run
  25-35% slower, by an amount that changes from process to process. Latency does not depend
  on the weights' values, so the models are freshly initialised and int8 is calibrated on
  random inputs.
* **accuracy** (the study ``bench/studies/deploy.yaml``: SGD and CrAM+ Multi on the Q model,
  3 seeds): the int8 model's test accuracy measured in ONNX Runtime against the float model's,
  from the ``deployment`` evaluator.

Bars: int8/ORT-fp32 ≥ 2.0× at batch 1 and 64; int8/torch ≥ 3×; channel-50% + int8 ≥ 5× the
dense torch model at batch 64; int8 accuracy within 0.5 point of float for every seed.

A process's ratios move by some 5% from one process to the next on this host (its memory
layout), more than the interleaved medians within one process do. ``--sessions N`` times the
speed half in N fresh processes, one after another, judges the bars on the median of their
ratios and shows the min–max; every session's figures are kept in the result file.

    python bench/deploy.py                 # train what is missing, time, report
    python bench/deploy.py --report-only   # the accuracy half from the store; speed re-timed
    python bench/deploy.py --smoke         # tiny models and data (CI)
    python bench/deploy.py --sessions 5    # speed timed in 5 processes, bars on the median
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/deploy.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, result_path, study_parser, write_payload  # noqa: E402
from bench.robustness import collect, load, run, stats, value  # noqa: E402

STUDY = ROOT / "bench" / "studies" / "deploy.yaml"
SMOKE_SET = [
    "data.samples=300",
    "data.batch_size=60",
    "model.width=8",
    "train.epochs=1",
    "evaluate.deployment.batch_sizes=[1, 4]",
    "evaluate.deployment.repeats=2",
    "evaluate.deployment.calibration_batches=2",
]
ACCURACY_BAR = 0.5  # percentage points, |int8 - float| for every seed
RUNTIMES = (
    "torch",
    "ort_fp32",
    "ort_int8",
    "channel50_fp32",
    "channel50_int8",
    "unstructured90_fp32",
)


def masks_of(model: Any, operator: Any, sparsity: float) -> dict[str, Any]:
    from compressor.kit.selection import select_targets

    operator.bind(model, select_targets(model))
    return dict(operator.masks({t.name: t.param for t in operator.targets}, sparsity))


def masked(model: Any, masks: dict[str, Any]) -> Any:
    import copy

    import torch

    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            out.get_parameter(name).mul_(mask)
    return out.eval()


def speed_models(smoke: bool) -> tuple[Any, dict[str, Any], dict[str, Any], tuple[int, ...]]:
    """The dense model, its channel masks at 50% and its unstructured (global magnitude) masks
    at 90%, and the input shape (without batch)."""
    import torch

    from compressor_plugins.channel.operator import Channel
    from compressor_plugins.prune.magnitude import Magnitude
    from compressor_plugins.zoo.models import MNIST1DCNN
    from compressor_plugins.zoo.resnet import ResNetCIFAR

    torch.manual_seed(0)
    if smoke:
        model, shape = MNIST1DCNN(40, 10, 16), (40,)
    else:
        model, shape = ResNetCIFAR(10, 3, input_shape=(3, 32, 32)), (3, 32, 32)
    model.eval()
    channel = Channel(Channel.Config(kind="channel", round_to=8))  # type: ignore[call-arg]
    magnitude = Magnitude(Magnitude.Config(kind="magnitude"))
    return model, masks_of(model, channel, 0.5), masks_of(model, magnitude, 0.9), shape


def speed(smoke: bool, rounds: int, batches: tuple[int, ...]) -> dict[str, Any]:
    """Export the ONNX models and time every runtime side by side, one thread."""

    import torch

    from compressor.plugin_api import interleaved_times, reuse_freed_memory
    from compressor_plugins.export.onnx_export import export_onnx, feeds, session

    torch.set_num_threads(1)
    # torch eager at its best: under glibc's default thresholds its batch-64 activations fault
    # in afresh on every forward (~9,900 page faults, 95-102 ms instead of 75), and by how much
    # depends on the process's heap layout. ONNX Runtime allocates from its own arena.
    fixed_allocator = reuse_freed_memory()
    model, channel_masks, unstructured_masks, shape = speed_models(smoke)
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(32, *shape, generator=generator) for _ in range(8)]
    check = calibration[0]
    out: dict[str, Any] = {
        "model": type(model).__name__,
        "input_shape": list(shape),
        "glibc_thresholds_fixed": fixed_allocator,
    }
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        paths = {name: Path(tmp) / f"{name}.onnx" for name in RUNTIMES[1:]}
        reports = {
            "int8": export_onnx(
                model,
                paths["ort_int8"],
                check,
                calibration=lambda: iter(calibration),
                int8=True,
                fp32_path=paths["ort_fp32"],
            ),
            "channel50_int8": export_onnx(
                masked(model, channel_masks),
                paths["channel50_int8"],
                check,
                calibration=lambda: iter(calibration),
                int8=True,
                masks=channel_masks,
                fp32_path=paths["channel50_fp32"],
            ),
            "unstructured90_fp32": export_onnx(
                masked(model, unstructured_masks),
                paths["unstructured90_fp32"],
                check,
                masks=unstructured_masks,
            ),
        }
        out["checks"] = {
            "fp32_relative_diff": reports["int8"]["fp32"]["relative_diff"],
            "int8_top1_agreement": reports["int8"]["int8_check"]["top1_agreement"],
            "channel50_params": reports["channel50_int8"].get("params"),
        }
        out["bytes"] = {name: path.stat().st_size for name, path in paths.items()}
        sessions = {name: session(path, 1) for name, path in paths.items()}
        model.eval()
        for batch in batches:
            x = torch.randn(batch, *shape, generator=generator)
            data = feeds(x)
            calls: dict[str, Any] = {"torch": lambda x=x: model(x)}
            for name, graph in sessions.items():
                calls[name] = functools.partial(graph.run, None, data)
            times = interleaved_times(calls, repeats=rounds if batch == 1 else max(rounds // 4, 2))
            out[f"batch{batch}"] = times
    return out


def speed_ratios(result: dict[str, Any], batches: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """CPU-time ratios per batch: how many times faster the second runtime is."""
    ratios: dict[str, dict[str, float]] = {}
    for batch in batches:
        t = result[f"batch{batch}"]
        ratios[f"batch{batch}"] = {
            "int8_vs_ort_fp32": t["ort_fp32"]["cpu_ms"] / t["ort_int8"]["cpu_ms"],
            "int8_vs_torch": t["torch"]["cpu_ms"] / t["ort_int8"]["cpu_ms"],
            "ort_fp32_vs_torch": t["torch"]["cpu_ms"] / t["ort_fp32"]["cpu_ms"],
            "channel50_int8_vs_torch": t["torch"]["cpu_ms"] / t["channel50_int8"]["cpu_ms"],
            "channel50_fp32_vs_ort_fp32": t["ort_fp32"]["cpu_ms"] / t["channel50_fp32"]["cpu_ms"],
            "unstructured90_vs_ort_fp32": (
                t["ort_fp32"]["cpu_ms"] / t["unstructured90_fp32"]["cpu_ms"]
            ),
        }
    return ratios


def median_ratios(
    sessions: list[dict[str, dict[str, float]]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, tuple[float, float]]]]:
    """The median of each ratio over the sessions, and its min–max."""
    medians: dict[str, dict[str, float]] = {}
    spans: dict[str, dict[str, tuple[float, float]]] = {}
    for batch, keys in sessions[0].items():
        medians[batch], spans[batch] = {}, {}
        for key in keys:
            values = [one[batch][key] for one in sessions]
            medians[batch][key] = statistics.median(values)
            spans[batch][key] = (min(values), max(values))
    return medians, spans


def speed_sessions(
    count: int, smoke: bool, rounds: int, batches: tuple[int, ...], threads: int
) -> list[dict[str, Any]]:
    """The speed half in ``count`` fresh processes, one after another (one: in this process)."""
    if count == 1:
        return [speed(smoke, rounds, batches)]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-deploy-sessions-") as tmp:
        for index in range(count):
            path = Path(tmp) / f"session-{index}.json"
            command = [sys.executable, __file__, "--speed-worker", str(path)]
            command += ["--rounds", str(rounds), "--threads", str(threads)]
            command += ["--smoke"] if smoke else []
            subprocess.run(command, check=True)
            results.append(json.loads(path.read_text()))
    return results


def accuracy(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per label: float and int8 test accuracy (%, as ``value`` gives it) per seed, and the
    differences in points."""
    table: dict[str, Any] = {}
    for label, by_seed in runs.items():
        per_seed: dict[int, dict[str, float]] = {}
        for seed, one in sorted(by_seed.items()):
            int8 = value(one, "deployment:int8_accuracy")
            delta = value(one, "deployment:int8_delta_accuracy")
            if int8 is None or delta is None:
                continue
            per_seed[seed] = {"float": int8 - delta, "int8": int8, "delta": delta}
        table[label] = {
            "per_seed": per_seed,
            "delta": stats([row["delta"] for row in per_seed.values()]) if per_seed else None,
        }
    return table


def bars(
    ratios: dict[str, dict[str, float]], acc: dict[str, Any], batches: tuple[int, ...]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def bar(name: str, measured: float, need: float, above: bool = True) -> None:
        ok = measured >= need if above else measured <= need
        margin = measured - need if above else need - measured
        rows.append(
            {
                "bar": name,
                "measured": measured,
                "need": need,
                "margin": margin,
                "status": "PASS" if ok else "MISS",
            }
        )

    for batch in batches:
        r = ratios[f"batch{batch}"]
        bar(f"int8 / ORT fp32, b{batch}", r["int8_vs_ort_fp32"], 2.0)
        bar(f"int8 / torch fp32, b{batch}", r["int8_vs_torch"], 3.0)
    last = f"batch{batches[-1]}"
    bar(
        f"channel50+int8 / dense torch, b{batches[-1]}",
        ratios[last]["channel50_int8_vs_torch"],
        5.0,
    )
    for label, row in acc.items():
        deltas = [abs(d["delta"]) for d in row["per_seed"].values()]
        if deltas:
            bar(f"{label}: max |int8 - float| over seeds (pt)", max(deltas), ACCURACY_BAR, False)
    return rows


def render(
    result: dict[str, Any],
    ratios: dict[str, Any],
    acc: dict[str, Any],
    rows: list[dict[str, Any]],
    batches: tuple[int, ...],
    spans: dict[str, dict[str, tuple[float, float]]] | None = None,
    sessions: int = 1,
) -> str:
    lines = [
        f"D speed: {result['model']}, one thread, median ms per batch (process CPU time; wall)"
        + (f"; the first of {sessions} sessions" if sessions > 1 else ""),
        "",
    ]
    lines += [
        "| runtime | " + " | ".join(f"b{b}" for b in batches) + " | file KB |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for name in RUNTIMES:
        cells = [
            f"{result[f'batch{b}'][name]['cpu_ms']:.2f} ({result[f'batch{b}'][name]['wall_ms']:.2f})"
            for b in batches
        ]
        size = result["bytes"].get(name)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {size / 1024:.0f} |"
            if size
            else f"| {name} | " + " | ".join(cells) + " | – |"
        )
    title = "ratio (CPU time)" + (f", median of {sessions} sessions (min–max)" if spans else "")
    lines += [
        "",
        f"| {title} | " + " | ".join(f"b{b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]

    def cell(batch: int, key: str) -> str:
        text = f"{ratios[f'batch{batch}'][key]:.2f}"
        if spans:
            low, high = spans[f"batch{batch}"][key]
            text += f" ({low:.2f}–{high:.2f})"
        return text

    for key in ratios[f"batch{batches[0]}"]:
        lines.append(f"| {key} | " + " | ".join(cell(b, key) for b in batches) + " |")
    lines += ["", "D accuracy: test accuracy % (float torch vs static int8 in ONNX Runtime)", ""]
    lines += ["| model | seed | float | int8 | Δ pt |", "|---|---|---|---|---|"]
    for label, row in acc.items():
        for seed, d in row["per_seed"].items():
            lines.append(
                f"| {label} | {seed} | {d['float']:.2f} | {d['int8']:.2f} | {d['delta']:+.2f} |"
            )
    lines += ["", "Bars", "", "| bar | measured | need | status |", "|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['bar']} | {row['measured']:.2f} | {row['need']:g} | {row['status']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0], smoke="tiny models and data (CI)", study=STUDY)
    parser.add_argument("--rounds", type=int, default=60, help="timed rounds at batch 1")
    parser.add_argument(
        "--sessions", type=int, default=1, help="time the speed half in N fresh processes"
    )
    parser.add_argument("--speed-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    study_path = args.study.resolve()
    overrides = list(args.overrides)
    seeds = args.seeds
    batches = (1, 64)
    rounds = args.rounds
    if args.smoke:
        overrides = SMOKE_SET + overrides
        seeds = seeds or [0]
        batches, rounds = (1, 4), min(rounds, 4)
    if args.speed_worker:  # one session of --sessions: the speed half alone, to a file
        args.speed_worker.write_text(json.dumps(speed(args.smoke, rounds, batches)))
        return 0
    out = args.out or (RESULTS / (f"{study_path.stem}-smoke" if args.smoke else study_path.stem))
    out = out.resolve()
    started = time.perf_counter()
    if not args.report_only:
        study, plugins = load(study_path, out, seeds, overrides)
        run(study, plugins, out, not (args.quiet or args.smoke), args.jobs, args.threads)
    runs = collect(out)
    if seeds is not None:
        runs = {label: {s: r for s, r in by.items() if s in seeds} for label, by in runs.items()}
    acc = accuracy(runs)
    results = speed_sessions(max(args.sessions, 1), args.smoke, rounds, batches, args.threads)
    per_session = [speed_ratios(one, batches) for one in results]
    ratios, spans = median_ratios(per_session)
    rows = bars(ratios, acc, batches)
    many = len(results) > 1
    text = render(results[0], ratios, acc, rows, batches, spans if many else None, len(results))
    print(text)
    payload = {
        "smoke": args.smoke,
        "overrides": overrides,
        "seeds_done": {label: sorted(by) for label, by in runs.items()},
        "elapsed_s": time.perf_counter() - started,
        "speed": results[0],
        "ratios": ratios,
        "sessions": [
            {"speed": one, "ratios": r} for one, r in zip(results, per_session, strict=True)
        ],
        "accuracy": acc,
        "bars": rows,
        "tables_markdown": text,
    }
    write_payload(payload, args.json or result_path("deploy-smoke" if args.smoke else "deploy"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
