"""Post-training compression of a language model, side by side with llm-compressor
(BENCHMARKS.md "L", issue 23).

The model: a Llama-style byte-level causal LM (6 blocks, hidden 256, 4 heads, MLP 768) that
``bench/llm_text.py`` pretrains once on the Python standard library's sources and caches as a
local HF folder (``$COMPRESSOR_BENCH_CACHE``, default ``~/.cache/compressor-bench``). The data:
128 calibration windows of 256 tokens from the training text and 200 held-out windows for
perplexity, seeded, the same tensors for both libraries. The methods: GPTQ and RTN 4-bit
symmetric group 128, SparseGPT 50% and 2:4, Wanda 50%; LM head and embeddings dense; damp 0.01,
block 128.

Each (library, method) runs in its own process, so the peak RSS (``ru_maxrss``) is that run's
alone and the two libraries share nothing: compressor from this venv (``compressor.compress``,
``sequential: block`` and ``exact``), llm-compressor 0.14 from a venv the bench makes for it
(``bench/llm_ptq_peer.py``; torch pinned to this venv's version so both run the same kernels).
The figure of time is the compression call alone (wall seconds: llm-compressor's sequential
pipeline is single-process, as ours, and both run one thread). Every output is scored by one
perplexity function (``bench.llm_text.perplexity``) on plain torch weights. The depth figure:
GPTQ on random-init copies of the model with N and 2N blocks, ``t(2N) / t(N)`` per library.

    .venv/bin/python -m bench.llm_ptq                 # pretrain once (~25 min), then ~minutes
    .venv/bin/python -m bench.llm_ptq --smoke         # seconds, no peer (CI)
    .venv/bin/python -m bench.llm_ptq --methods gptq wanda50 --modes block
    .venv/bin/python -m bench.llm_ptq --repeats 3   # medians of 3 alternating launches

Settings that cannot be matched exactly are listed in ``UNMATCHED`` and in the result file.
Writes ``bench/results/llm_ptq.json`` (``llm_ptq-smoke.json``; ``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import result_path, write_payload
from bench.llm_text import (
    CACHE,
    ModelSpec,
    llama,
    perplexity,
    pretrained,
    split_text,
    stdlib_bytes,
    windows,
)

PEER = "llmcompressor==0.14.0.1"
CT = "compressed-tensors"  # the 4-bit grid llm-compressor's W4A16 quantizes onto
METHODS: dict[str, dict[str, Any]] = {
    "gptq": {"operator": {"kind": "gptq", "bits": 4, "group_size": 128, "grid": CT}},
    "rtn": {"operator": {"kind": "quant", "bits": 4, "group_size": 128, "grid": CT}},
    "sparsegpt50": {"sparsity": 0.5, "operator": {"kind": "sparsegpt"}},
    "sparsegpt24": {"sparsity": 0.5, "operator": {"kind": "sparsegpt", "nm": [2, 4]}},
    "wanda50": {"sparsity": 0.5, "operator": {"kind": "wanda"}},
}
DATA_AWARE = {"gptq", "sparsegpt", "wanda"}
UNMATCHED = [
    "calibration batches: llm-compressor forwards one window at a time (its default); compressor "
    "8 windows per forward (the statistics are the same sums over tokens; 16 ran ~5% faster "
    "but its larger transient activations fragmented glibc's heap into peaks of up to +140 MiB)",
]
FULL = ModelSpec(steps=300, batch=8, lr=2e-3)
SMOKE = ModelSpec(blocks=2, hidden=128, heads=4, intermediate=256, steps=4, batch=2, window=64)


def recipe(method: str, mode: str) -> dict[str, Any]:
    modifier = {"type": "oneshot", **json.loads(json.dumps(METHODS[method]))}
    modifier["operator"]["exclude"] = ["lm_head.weight"]  # the protocol: LM head dense
    if modifier["operator"]["kind"] in DATA_AWARE:
        modifier["operator"]["calibration"] = {"sequential": mode}
    return {"name": f"{method}-{mode}", "modifiers": [modifier]}


def ours(model_dir: Path, calib: Path, method: str, mode: str, out: Path, batch: int) -> None:
    """compressor's side, in this (child) process: load, compress, save plain weights."""
    from transformers import AutoModelForCausalLM

    from compressor import compress  # imported before the clock, as the peer's oneshot is

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.load(calib)
    batches = [{"input_ids": ids[i : i + batch]} for i in range(0, len(ids), batch)]
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        compress(model, recipe(method, mode), batches)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "method": method,
        "mode": mode,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mib": peak,
    }
    (out / "result.json").write_text(json.dumps(figures) + "\n")


def peer_python() -> Path:
    """The Python of a venv holding llm-compressor, made once beside the model cache; torch
    pinned to this venv's version (an unpinned one would pull a CUDA build)."""
    venv = CACHE / f"venv-{PEER.replace('==', '-')}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = venv / "constraints.txt"
    pins.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(pins), PEER], check=True)
    return python


def child(command: list[str], out: Path, threads: int) -> dict[str, Any]:
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-3000:]}")
    name = "peer.json" if (out / "peer.json").exists() else "result.json"
    return json.loads((out / name).read_text())


def score(model_dir: Path, weights: Path, held_out: torch.Tensor) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.load_state_dict(torch.load(weights), strict=True)
    return perplexity(model, held_out)


def run_one(
    library: str, model_dir: Path, calib: Path, method: str, mode: str, work: Path, args: Any
) -> dict[str, Any]:
    out = work / f"{library}-{method}-{mode}-{model_dir.name}"
    if library == "llm-compressor":
        command = [str(args.peer_python), str(Path(__file__).with_name("llm_ptq_peer.py"))]
        command += ["--model", str(model_dir), "--windows", str(calib), "--method", method]
        command += ["--out", str(out), "--threads", str(args.threads)]
    else:
        command = [sys.executable, "-m", "bench.llm_ptq", "--worker", method, mode]
        command += ["--model", str(model_dir), "--calib", str(calib), "--out", str(out)]
        command += ["--threads", str(args.threads), "--batch", str(args.batch)]
    return child(command, out, args.threads) | {"out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--modes", nargs="+", choices=["block", "exact"], default=["block"])
    parser.add_argument("--no-peer", action="store_true", help="compressor only")
    parser.add_argument("--peer-only", action="store_true", help="llm-compressor only")
    parser.add_argument("--no-depth", action="store_true", help="skip the N/2N timing")
    parser.add_argument("--calibration", type=int, default=128, help="windows")
    parser.add_argument("--held-out", type=int, default=200, help="windows")
    parser.add_argument("--batch", type=int, default=8, help="compressor: windows per forward")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=1, help="launches per (library, method), medians reported"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, no peer, seconds")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--calib", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        ours(args.model, args.calib, *args.worker, args.out, args.batch)
        return 0

    spec = SMOKE if args.smoke else FULL
    if args.smoke:
        args.no_peer, args.calibration, args.held_out, args.batch = True, 8, 8, 4
    text_limit = 1_000_000 if args.smoke else None
    model_dir = pretrained(spec, text_limit=text_limit)
    train_ids, held_ids = split_text(stdlib_bytes(text_limit))
    work = CACHE / "llm_ptq" / f"work-{spec.key()}"
    work.mkdir(parents=True, exist_ok=True)
    calib = work / f"calibration-{args.calibration}.pt"
    torch.save(windows(train_ids, args.calibration, spec.window, 0), calib)
    held_out = windows(held_ids, args.held_out, spec.window, 1)
    args.peer_python = None if args.no_peer else peer_python()
    libraries = [] if args.peer_only else [("compressor", mode) for mode in args.modes]
    libraries += [] if args.no_peer else [("llm-compressor", "sequential")]

    dense = perplexity(_load(model_dir), held_out)
    print(f"dense perplexity {dense:.4f} ({args.held_out} held-out windows of {spec.window})")
    print("| method | library | mode | perplexity | compress s | CPU s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for method in args.methods:
        samples: dict[tuple[str, str], list[dict[str, Any]]] = {lib: [] for lib in libraries}
        for _ in range(args.repeats):  # alternating launches: host noise hits both alike
            for library, mode in libraries:
                samples[library, mode].append(
                    run_one(library, model_dir, calib, method, mode, work, args)
                )
        for (library, mode), runs in samples.items():
            figures = median_figures(runs)
            figures["perplexity"] = score(model_dir, Path(figures["out"]) / "weights.pt", held_out)
            figures |= {"library": library, "mode": mode}
            rows.append(figures)
            print(
                f"| {method} | {library} | {mode} | {figures['perplexity']:.4f} | "
                f"{figures['seconds']:.1f} | {figures['cpu_seconds']:.1f} | "
                f"{figures['peak_rss_mib']:.0f} |",
                flush=True,
            )
    depth = [] if args.no_depth else depth_rows(spec, work, calib, libraries, args)
    name = "llm_ptq-smoke" if args.smoke else "llm_ptq"
    payload = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "model": spec.__dict__,
        "dense_perplexity": dense,
        "unmatched": UNMATCHED,
        "results": rows,
        "depth": depth,
    }
    write_payload(payload, args.output or result_path(name))
    return 0


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One (library, method)'s launches: the median of each figure, and every sample kept."""
    keys = ("seconds", "cpu_seconds", "peak_rss_mib")
    out = {**runs[-1], **{k: statistics.median(r[k] for r in runs) for k in keys}}
    out["samples"] = {k: [r[k] for r in runs] for k in keys}
    return out


def _load(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def depth_rows(
    spec: ModelSpec, work: Path, calib: Path, libraries: list[tuple[str, str]], args: Any
) -> list[dict[str, Any]]:
    """GPTQ time on random-init models of N and 2N blocks: ``t(2N) / t(N)`` per library."""
    print("| library | mode | GPTQ s, N blocks | 2N blocks | ratio | CPU ratio |")
    print("|---|---|---|---|---|---|")
    folders = {}
    for blocks in (spec.blocks, 2 * spec.blocks):
        folder = work / f"random-{blocks}"
        if not (folder / "config.json").exists():
            llama(ModelSpec(**{**spec.__dict__, "blocks": blocks})).save_pretrained(folder)
        folders[blocks] = folder
    rows = []
    for library, mode in libraries:
        launches: dict[int, list[dict[str, Any]]] = {blocks: [] for blocks in folders}
        for _ in range(args.repeats):  # N, 2N, N, 2N, ...: medians of alternating launches
            for blocks, folder in folders.items():
                launches[blocks].append(run_one(library, folder, calib, "gptq", mode, work, args))
        runs = {blocks: median_figures(samples) for blocks, samples in launches.items()}
        n, deep = runs[spec.blocks], runs[2 * spec.blocks]
        row = {
            "library": library,
            "mode": mode,
            "seconds": {"N": n["seconds"], "2N": deep["seconds"]},
            "cpu_seconds": {"N": n["cpu_seconds"], "2N": deep["cpu_seconds"]},
            "ratio": deep["seconds"] / n["seconds"],
            "cpu_ratio": deep["cpu_seconds"] / n["cpu_seconds"],
            "samples": {"N": n["samples"]["seconds"], "2N": deep["samples"]["seconds"]},
        }
        rows.append(row)
        print(
            f"| {library} | {mode} | {n['seconds']:.1f} | {deep['seconds']:.1f} | "
            f"{row['ratio']:.2f} | {row['cpu_ratio']:.2f} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
