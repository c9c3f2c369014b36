"""`compressor compare --jobs 2` against a serial study (BENCHMARKS.md P).

    python -m bench.parallel                   # the embedded default study, serial then --jobs 2
    python -m bench.parallel --smoke           # a 2-recipe, 1-epoch version (seconds)

Runs the same study twice through the real CLI, each into a fresh folder, one after the other
on the same machine: serially as a user runs it (``compressor compare STUDY``: one process,
torch's default threads) and with ``--jobs 2`` (two worker processes, one thread each). Reports
both wall times and their ratio, and whether the two stores hold the same runs and the same
results. Timing metrics (train time, latency, speed-ups) differ between any two runs and are
left out of that comparison; the rest may differ in the last bits where the serial run uses
more than one thread (a different summation order), so the largest difference is reported.
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

from bench.common import write_result  # noqa: E402

STUDY = ROOT / "recipes" / "studies" / "mnist1d.yaml"
TIMED = ("time", "latency", "speedup", "_ms")
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
        "--serial-threads", type=int, default=None, help="torch threads of the serial run"
    )
    args = parser.parse_args(argv)
    sets = SMOKE_SET if args.smoke else []
    with tempfile.TemporaryDirectory(prefix="compressor-parallel-") as tmp:
        serial_out, parallel_out = Path(tmp) / "serial", Path(tmp) / "parallel"
        serial = compare(serial_out, [], sets, args.serial_threads)
        parallel = compare(parallel_out, ["--jobs", str(args.jobs)], sets, None)
        serial_runs, serial_values = stored(serial_out)
        parallel_runs, parallel_values = stored(parallel_out)
    same_runs = serial_runs == parallel_runs and set(serial_runs.values()) == {"done"}
    same_metrics = serial_values.keys() == parallel_values.keys()
    largest = max(
        (abs(serial_values[k] - parallel_values[k]) for k in serial_values if k in parallel_values),
        default=0.0,
    )
    result: dict[str, Any] = {
        "benchmark": "parallel",
        "smoke": args.smoke,
        "study": str(STUDY.relative_to(ROOT)),
        "cpus": len(os.sched_getaffinity(0)),
        "jobs": args.jobs,
        "serial_threads": args.serial_threads or "torch default",
        "serial_wall_s": serial,
        "parallel_wall_s": parallel,
        "speedup": serial / parallel,
        "runs": len(serial_runs),
        "same_runs": same_runs,
        "same_metric_names": same_metrics,
        "largest_metric_difference": largest,
    }
    print(
        f"serial {serial:.1f} s, --jobs {args.jobs} {parallel:.1f} s: {serial / parallel:.2f}x; "
        f"{len(serial_runs)} runs, same runs {same_runs}, same metrics {same_metrics}, "
        f"largest difference {largest:.3g}"
    )
    print(f"wrote {write_result('parallel-smoke' if args.smoke else 'parallel', result)}")
    return 0 if same_runs and same_metrics else 1


if __name__ == "__main__":
    sys.exit(main())
