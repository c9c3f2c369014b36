"""`compressor compare --jobs 2` against a serial study (BENCHMARKS.md P).

    python -m bench.parallel                        # the default study, serial then --jobs 2
    python -m bench.parallel --serial-threads 1 2   # two serial baselines, then --jobs 2
    python -m bench.parallel --smoke                # a 2-recipe, 1-epoch version (seconds)

Runs the same study through the real CLI, each time into a fresh folder, one after the other
on the same machine: serially as a user runs it (``compressor compare STUDY``: one process,
torch's default threads, or each ``--serial-threads`` value in turn) and with ``--jobs 2`` (two
worker processes, one thread each). Reports the wall times and the ratio serial / parallel for
each baseline, and whether the stores hold the same runs and the same results. Timing metrics
(train time, latency, speed-ups) differ between any two runs and are left out of that
comparison; the rest may differ in the last bits where the serial run uses more than one
thread (a different summation order), so the largest difference is reported.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path, write_payload  # noqa: E402

STUDY = ROOT / "recipes" / "studies" / "mnist1d.yaml"
TIMED = ("time", "latency", "speedup", "_ms", ":ms_")
SMOKE_SET = [
    "data.samples=200",
    "model.width=8",
    "train.epochs=6",  # the study's schedules end at 5ep
    "evaluate.oneshot.bn_recalibration.batches=2",
    "evaluate.oneshot.bn_recalibration.calibration_samples=100",
    "evaluate.realised.repeats=2",
]


def compare(out: Path, extra: list[str], sets: list[str], threads: int | None) -> float:
    command = [sys.executable, "-m", "compressor.cli"]
    if threads:
        command += ["--threads", str(threads)]
    command += ["compare", str(STUDY), "--out", str(out), "--quiet", *extra]
    for item in sets:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall


def stored(out: Path) -> tuple[dict[str, str], dict[tuple[str, str], float]]:
    db = sqlite3.connect(out / "results.sqlite")
    runs = dict(db.execute("SELECT key, status FROM runs"))
    values = {
        (key, name): value
        for key, name, value in db.execute("SELECT key, name, value FROM metrics")
        if not any(part in name for part in TIMED)
    }
    db.close()
    return runs, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny and fast (CI)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--serial-threads",
        type=int,
        nargs="+",
        default=[None],
        help="torch threads of the serial run; several values: one serial run each",
    )
    args = parser.parse_args(argv)
    sets = SMOKE_SET if args.smoke else []
    with tempfile.TemporaryDirectory(prefix="compressor-parallel-") as tmp:
        serial: dict[int | None, float] = {}
        stores = {}
        for threads in args.serial_threads:
            out = Path(tmp) / f"serial-{threads or 'default'}"
            serial[threads] = compare(out, [], sets, threads)
            stores[threads] = stored(out)
        parallel_out = Path(tmp) / "parallel"
        parallel = compare(parallel_out, ["--jobs", str(args.jobs)], sets, None)
        parallel_runs, parallel_values = stored(parallel_out)
    baselines = []
    for threads, wall in serial.items():
        serial_runs, serial_values = stores[threads]
        same_runs = serial_runs == parallel_runs and set(serial_runs.values()) == {"done"}
        same_metrics = serial_values.keys() == parallel_values.keys()
        differences = {
            f"{key}: {name}": abs(value - parallel_values[(key, name)])
            for (key, name), value in serial_values.items()
            if (key, name) in parallel_values
        }
        largest = max(differences.values(), default=0.0)
        differing = sorted(name for name, diff in differences.items() if diff > 0)
        baselines.append(
            {
                "serial_threads": threads or "torch default",
                "serial_wall_s": wall,
                "speedup": wall / parallel,
                "runs": len(serial_runs),
                "same_runs": same_runs,
                "same_metric_names": same_metrics,
                "largest_metric_difference": largest,
                "differing_metrics": differing,
            }
        )
        print(
            f"serial ({threads or 'default'} threads) {wall:.1f} s, --jobs {args.jobs} "
            f"{parallel:.1f} s: {wall / parallel:.2f}x; {len(serial_runs)} runs, same runs "
            f"{same_runs}, same metrics {same_metrics}, largest difference {largest:.3g}"
        )
    result: dict[str, Any] = {
        "benchmark": "parallel",
        "smoke": args.smoke,
        "study": str(STUDY.relative_to(ROOT)),
        "cpus": len(os.sched_getaffinity(0)),
        "jobs": args.jobs,
        "parallel_wall_s": parallel,
        "baselines": baselines,
    }
    name = "parallel-smoke" if args.smoke else "parallel"
    write_payload(result, result_path(name))
    ok = all(b["same_runs"] and b["same_metric_names"] for b in baselines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
