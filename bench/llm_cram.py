"""CrAM meets language models (BENCHMARKS.md "L", issue 23 item 6): does CrAM+ fine-tuning
make a pretrained LM easier to one-shot compress than plain AdamW fine-tuning followed by
SparseGPT?

From the bench's pretrained byte-level Llama (``bench/llm_ptq.py``'s ``FULL``, cached by
``bench/llm_text.py``; ``SMOKE`` with ``--smoke``), each fine-tune runs the same number of
steps on the same stdlib-text windows in the same order (seeded), through a
``compressor.Session`` in a plain torch loop with AdamW as the base optimizer and a cosine LR
factor: (a) AdamW alone, (b) CrAM+ around it drawing 50% or 70% per-layer magnitude per step,
(c) CrAM+ with 2:4 (the ``nm`` operator, a fixed pattern). Each fine-tuned model is then
compressed in one shot (``compressor.compress``, a ``oneshot`` modifier, ``sequential: block``)
by magnitude (per layer; ``nm`` for 2:4), Wanda and SparseGPT at 50%, 70% and 2:4, LM head and
embeddings dense, and scored by ``bench.llm_text.perplexity`` on held-out windows. The margin
column: CrAM+ minus SparseGPT-after-AdamW at equal sparsity (negative = CrAM+ better).

    .venv/bin/python -m bench.llm_cram --steps 60     # the real model (pretrained once)
    .venv/bin/python -m bench.llm_cram --smoke        # tiny model, a few steps, seconds (CI)

Fine-tuned weights are cached beside the model (keyed by every setting), so a rerun only
re-scores. Writes ``bench/results/llm_cram.json`` (``llm_cram-smoke.json``; ``--output``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import result_path, write_payload
from bench.llm_ptq import FULL, SMOKE
from bench.llm_text import CACHE, perplexity, pretrained, split_text, stdlib_bytes, windows

CALIBRATION = {"sequential": "block"}
# what the wrapper compresses: every Linear but the LM head (dense by default, as embeddings)
MAGNITUDE = {"kind": "magnitude", "scope": "layer"}
FINETUNES: dict[str, dict[str, Any] | None] = {
    "adamw": None,
    "cram+ {50,70}%": {"operator": MAGNITUDE, "sparsities": [0.5, 0.7]},
    "cram+ 2:4": {"operators": [{"kind": "nm", "keep": 2, "group": 4}]},
}
TARGETS = {"50%": 0.5, "70%": 0.7, "2:4": 0.5}
ONESHOTS = ("magnitude", "wanda", "sparsegpt")


def oneshot_operator(method: str, target: str) -> dict[str, Any]:
    """The one-shot operator for ``method`` at ``target`` (magnitude's 2:4 is ``nm``)."""
    if method == "magnitude":
        return {"kind": "nm", "keep": 2, "group": 4} if target == "2:4" else dict(MAGNITUDE)
    operator: dict[str, Any] = {"kind": method, "calibration": dict(CALIBRATION)}
    if target == "2:4":
        operator["nm"] = [2, 4]
    return operator


def finetune(
    model: nn.Module, wrapper: dict[str, Any] | None, train_ids: torch.Tensor, args: Any
) -> list[float]:
    """``args.steps`` AdamW steps (wrapped by CrAM+ when ``wrapper``) through a Session; the
    data order depends on ``args.seed`` alone. Returns the per-step training losses."""
    import compressor

    recipe: dict[str, Any] = {
        "version": 1,
        "name": "llm-cram-finetune",
        "train": {"epochs": 1, "seed": args.seed},
        "lr_schedule": {"kind": "cosine", "warmup": max(1, args.steps // 10)},
    }
    if wrapper is not None:
        recipe["wrapper"] = {"name": "cram", "plus": True, "rho": args.rho, **wrapper}
    session = compressor.Session(model, _recipe(recipe), steps_per_epoch=args.steps)
    base = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    optimizer = session.optimizer(base=base)
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    losses = []
    for step in range(args.steps):
        ids = windows(
            train_ids,
            args.batch,
            args.window,
            int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        )

        def closure(ids: torch.Tensor = ids) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss: torch.Tensor = model(input_ids=ids, labels=ids).loss
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        session.step_end(loss)
        losses.append(float(loss.detach()))
        if not args.quiet and (step % 10 == 0 or step == args.steps - 1):
            print(f"    step {step + 1}/{args.steps}: loss {losses[-1]:.4f}", flush=True)
    session.finalize()
    model.eval()
    return losses


def _recipe(mapping: dict[str, Any]) -> Any:
    from compressor.engine.compress import as_recipe
    from compressor.host.manager import load_plugins

    return as_recipe(mapping, load_plugins())


def oneshot(
    model: nn.Module, method: str, target: str, calib: torch.Tensor, batch: int
) -> tuple[nn.Module, float]:
    """A compressed copy of ``model`` (the original is untouched) and its achieved sparsity
    over the compressed tensors."""
    import compressor

    copied = copy.deepcopy(model).eval()
    operator = oneshot_operator(method, target)
    modifier = {"type": "oneshot", "sparsity": TARGETS[target], "operator": operator}
    batches = [{"input_ids": calib[i : i + batch]} for i in range(0, len(calib), batch)]
    recipe = {"name": f"{method}-{target}", "modifiers": [modifier]}
    with torch.no_grad():
        report = compressor.compress(copied, recipe, batches)
    return copied, float(report["sparsity"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps")
    parser.add_argument("--batch", type=int, default=8, help="windows per step")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW peak LR (cosine)")
    parser.add_argument("--rho", type=float, default=0.05, help="CrAM's unnormalised radius")
    parser.add_argument("--seed", type=int, default=1, help="data order and CrAM's draws")
    parser.add_argument("--calibration", type=int, default=32, help="windows")
    parser.add_argument("--held-out", type=int, default=64, help="windows")
    parser.add_argument("--calib-batch", type=int, default=16, help="windows per forward")
    parser.add_argument("--finetunes", nargs="+", choices=list(FINETUNES), default=list(FINETUNES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps, seconds")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--merge", type=Path, nargs="+", help="join result files of --finetunes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        return merge(args.merge, args.output or result_path("llm_cram"))
    spec = SMOKE if args.smoke else FULL
    if args.smoke:
        args.steps, args.batch, args.calibration, args.held_out = 3, 2, 4, 4
    args.window = spec.window
    text_limit = 1_000_000 if args.smoke else None
    model_dir = pretrained(spec, text_limit=text_limit, quiet=args.quiet)
    train_ids, held_ids = split_text(stdlib_bytes(text_limit))
    calib = windows(train_ids, args.calibration, spec.window, 0)
    held_out = windows(held_ids, args.held_out, spec.window, 1)

    from transformers import AutoModelForCausalLM

    pretrained_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    dense_pretrained = perplexity(pretrained_model, held_out)
    print(f"pretrained dense perplexity {dense_pretrained:.4f}", flush=True)
    settings = {k: v for k, v in vars(args).items() if k in ("steps", "batch", "lr", "rho", "seed")}
    rows: list[dict[str, Any]] = []
    for name in args.finetunes:
        model = copy.deepcopy(pretrained_model)
        cached = _cache(model_dir, name, settings, spec.window)
        began = time.perf_counter()
        if cached.exists():
            state = torch.load(cached)
            model.load_state_dict(state["weights"])
            losses = state["losses"]
        else:
            print(f"fine-tune {name}: {args.steps} steps", flush=True)
            losses = finetune(model, FINETUNES[name], train_ids, args)
            if not args.smoke:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"weights": model.state_dict(), "losses": losses}, cached)
        row: dict[str, Any] = {
            "finetune": name,
            "finetune_seconds": time.perf_counter() - began,
            "losses": losses,
            "dense": perplexity(model, held_out),
            "oneshot": {},
            "sparsity": {},
        }
        for method in ONESHOTS:
            for target in TARGETS:
                column = f"{method} {target}"
                compressed, row["sparsity"][column] = oneshot(
                    model, method, target, calib, args.calib_batch
                )
                row["oneshot"][column] = perplexity(compressed, held_out)
                print(f"  {name} | {column}: {row['oneshot'][column]:.4f}", flush=True)
        rows.append(row)
    table = markdown(rows)
    print(table)
    payload = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "model": spec.__dict__,
        "pretrained_dense_perplexity": dense_pretrained,
        "results": rows,
        "margins": margins(rows),
        "table": table,
    }
    write_payload(
        payload, args.output or result_path("llm_cram-smoke" if args.smoke else "llm_cram")
    )
    return 0


def merge(files: list[Path], output: Path) -> int:
    """One table and file from runs of the same settings with different ``--finetunes`` (run
    side by side as separate processes)."""
    parts = [json.loads(path.read_text()) for path in files]
    rows = [row for part in parts for row in part["results"]]
    rows.sort(key=lambda row: list(FINETUNES).index(row["finetune"]))
    table = markdown(rows)
    print(table)
    payload = {k: v for k, v in parts[0].items() if k != "machine"}
    payload |= {"merged_from": [str(path) for path in files], "results": rows}
    payload |= {"margins": margins(rows), "table": table}
    write_payload(payload, output)
    return 0


def _cache(model_dir: Path, name: str, settings: dict[str, Any], window: int) -> Path:
    key = json.dumps({"finetune": name, "window": window, **settings}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return CACHE / "llm_cram" / f"{model_dir.name}-{digest}.pt"


def margins(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per CrAM+ fine-tune and target: its best one-shot perplexity minus SparseGPT's after
    AdamW (negative: CrAM+ is better)."""
    base = next((r for r in rows if r["finetune"] == "adamw"), None)
    if base is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["finetune"] == "adamw":
            continue
        out[row["finetune"]] = {
            target: min(row["oneshot"][f"{m} {target}"] for m in ONESHOTS)
            - base["oneshot"][f"sparsegpt {target}"]
            for target in TARGETS
        }
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = [f"{m} {t}" for m in ONESHOTS for t in TARGETS]
    lines = [
        "| fine-tune | dense | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row['oneshot'][c]:.3f}" for c in columns]
        lines.append(f"| {row['finetune']} | {row['dense']:.3f} | " + " | ".join(cells) + " |")
    gaps = margins(rows)
    if gaps:
        lines += [
            "",
            "| margin: best one-shot after CrAM+ − SparseGPT after AdamW | "
            + " | ".join(TARGETS)
            + " |",
        ]
        lines.append("|---|" + "---|" * len(TARGETS))
        for name, values in gaps.items():
            lines.append(f"| {name} | " + " | ".join(f"{values[t]:+.3f}" for t in TARGETS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
