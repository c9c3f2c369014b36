"""Step cost of SAM and CrAM+ relative to SGD and to the released reference code
(BENCHMARKS.md S).

Same model (same initial weights), batch and random inputs for every method; steps are timed
interleaved in one process (the method order rotates every round) so the shared machine's
noise hits all methods alike. Wall time and process CPU time are both recorded: with one
thread, CPU time is far less disturbed by other jobs on a shared machine. Prints medians with
min-max and writes ``bench/results/step_cost.json`` (``step_cost-smoke.json`` with
``--smoke``).

Compressor's ``sgd``, ``sam`` and ``cram+`` are always timed. With local checkouts of the
released code the script also times ``sam-ref`` and ``cram+-ref`` and reports per-round
ratios compressor / reference (bar: <= 1.00):

* ``--sam-repo DIR`` (or ``COMPRESSOR_REF_SAM``): a checkout of https://github.com/davda54/sam
  (tested: commit 3c3afdbd71cff2462ec91c734b3d1170bd0f3707, MIT). Its ``sam.py`` and
  ``example/utility/bypass_bn.py`` are imported from DIR and driven as the batch loop of
  ``example/train.py`` does: running statistics enabled, pass 1 and backward,
  ``first_step(zero_grad=True)``, running statistics disabled (BN momentum 0), pass 2 and
  backward, ``second_step(zero_grad=True)``. Left out: that loop's accuracy, ``Log`` and
  ``StepLR`` lines (display and LR schedule).
* ``--cram-repo DIR`` (or ``COMPRESSOR_REF_CRAM``): a checkout of
  https://github.com/IST-DASLab/CrAM (tested: commit b89d9ff2b0c7d343736d587dd27f95d86a2df1cf,
  Apache-2.0), CrAM+ Multi: ``TopkCrAM`` from ``optimization/custom_optimizers.py`` with the
  options of ``configs/cifar10_resnet20_cram_plus_multi_spgrad.yaml`` (``plus_version`` and
  ``sparse_grad`` on, global magnitude pruning, ``grad_norm`` off), its BN helpers from
  ``utils/bypass_bn.py``, driven as ``Manager.optimize_minibatch`` (``manager.py``, the
  ``use_sam`` branch) does, whole: ``zero_grad``, pass 1 and backward, BN momentum 0,
  ``step(closure)`` (``first_step``, pass 2 in the closure, ``second_step``, which also runs
  ``update_state_dict``), BN momentum restored, then the per-step bookkeeping it returns
  (``loss.item()`` and the batch accuracy). ``custom_optimizers.py`` does
  ``from utils import percentile``; the package ``utils/__init__.py`` re-exports the whole
  training application (datasets, hence torchvision), so the script loads ``utils/utils.py``
  itself as ``utils`` while importing it. TopkCrAM's constructor prints its settings; that
  output is discarded.

Nothing of that code is in this repository: the files are imported from DIR at run time, and
their SHA-256 (and the checkout's commit, when DIR is a git checkout) are recorded in the JSON,
with a note when they are not the tested release. Without a checkout the reference rows are
skipped (one printed line says how to enable them). Both references get the benchmark's
hyperparameters, base ``torch.optim.SGD`` and criterion (mean cross-entropy).

Before timing, an equivalence check steps compressor and each given reference once from
identical weights on the same batch and requires the updated weights to agree (atol 1e-6):
SAM as configured, CrAM+ at one fixed sparsity chosen so that both keep the same number of
weights; at the timed sparsities the mask sizes and weight differences are reported, not
enforced. The script exits with status 1 if the check fails.

Where the references differ from compressor (facts about the released code):

1. CrAM mask size. The release keeps the weights with ``|w'| > t``, ``t`` the
   ``ceil((1 - s)·n)``-th largest magnitude, i.e. ``ceil(x) - 1`` weights for
   ``x = (1 - s)·n`` (absent ties, one fewer than the top-k its percentile names); compressor
   keeps exactly ``round(x)`` (halves up), ties broken by index. So the release keeps one
   weight fewer when ``x`` is an integer or its fractional part is >= 0.5, and the same number
   when it is in (0, 0.5), both computed in float (``(1 - 0.7)·n`` is slightly above
   ``0.3·n``). Where the counts differ the masks differ in exactly that weight (the threshold
   itself), and so do the updates. Ties at the threshold: the release drops every tied
   weight, compressor keeps the earliest ones.
2. Which weights are compressed. The release: every parameter with ``dim > 1`` and a
   gradient, in ``model.parameters()`` order; compressor: the ``weight`` of every Linear and
   Conv module (module order). The same sets for both benchmark models.
3. BatchNorm in pass 2. Both references set ``momentum = 0`` (the running mean/var are
   recomputed but stay numerically unchanged), yet ``num_batches_tracked`` still increments in
   pass 2; compressor freezes the statistics (no update, no increment). CrAM's helper matches
   ``nn.BatchNorm2d`` only: on the MNIST-1D CNN (``BatchNorm1d``) its pass 2 updates the
   running statistics with the layers' own momentum, from the compressed model. None of this
   changes the weights (train mode normalises with batch statistics); it changes BN buffers,
   which the check reports separately.
4. Random draw. The release draws the sparsity with ``np.random.choice`` (NumPy's global
   generator, seeded here); compressor uses ``torch.randint`` on the session's generator.
   Same distribution (uniform over the list), different streams.
5. Loss and SAM variant. davda54's example trains with label-smoothed cross-entropy and, by
   its argument defaults, adaptive SAM (ASAM, rho 2); neither is SAM itself, so the reference
   runs ``SAM(..., adaptive=False)`` with rho 0.05 and mean cross-entropy, as compressor's
   ``sam`` does.

``--optimizer-only`` times the same steps with the forward and backward passes replaced by
fixed gradients (each parameter's gradient set to a copy of a fixed random tensor, for every
method alike): what is left is each implementation's own work — perturbing, masking,
restoring, combining, the base step. The passes themselves run the same torch kernels in
every implementation (the equivalence check above shows the same arithmetic), so this is
where the implementations can differ, measured without the passes' noise.

Full run (MNIST-1D CNN and ResNet-20, batch 128, one thread) and smoke run (seconds: tiny
batch, few rounds; CI), from the repository root:

    python -m bench.step_cost --sam-repo SAM_DIR --cram-repo CRAM_DIR
    python -m bench.step_cost --optimizer-only --rounds 200 --steps 10 --sam-repo ... --cram-repo ...
    python -m bench.step_cost --smoke [--sam-repo SAM_DIR --cram-repo CRAM_DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/step_cost.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import write_payload  # noqa: E402
from bench.step_check import ATOL, check_equivalence  # noqa: E402
from bench.step_models import resnet20  # noqa: E402
from bench.step_refs import (  # noqa: E402
    SOURCES,
    Reference,
    ReferenceUnavailable,
    load_reference,
    make_reference,
    reference_names,
    skip_line,
)
from bench.step_setup import (  # noqa: E402
    CRAM_RHO,
    CRAM_SPARSITIES,
    METHODS,
    OPTIMIZER,
    SAM_RHO,
    SGD_SETTINGS,
    make_stepper,
)
from compressor import Session  # noqa: E402
from compressor.recipe.schema import recipe_from_text  # noqa: E402
from compressor_plugins.zoo.models import MNIST1DCNN  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

PAIRS = {"sam": "sam-ref", "cram+": "cram+-ref"}  # compressor method -> its reference
BAR = 1.00  # compressor / reference, median of per-round ratios


# -- timing ------------------------------------------------------------------------------------


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
    refs: dict[str, Reference],
    batch: int,
    rounds: int,
    steps: int,
    warmup: int,
    device: torch.device,
    optimizer_only: bool = False,
) -> dict[str, Any]:
    torch.manual_seed(0)
    np.random.seed(0)  # the CrAM release draws its sparsity from NumPy's global generator
    base = build().to(device)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    equivalence = check_equivalence(refs, base, x, y) if refs else None
    fixed = (
        {name: 1e-3 * torch.randn_like(p) for name, p in base.named_parameters()}
        if optimizer_only
        else None
    )
    steppers = {m: make_stepper(copy.deepcopy(base), w, x, y, fixed) for m, w in METHODS.items()}
    for name in reference_names(refs):
        steppers[name] = make_reference(refs, name, copy.deepcopy(base), x, y, fixed=fixed)
    names = list(steppers)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steppers.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
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
        "optimizer_only": optimizer_only,
        "params": sum(p.numel() for p in base.parameters()),
        "mask_s": mask_cost(copy.deepcopy(base).cpu(), 5) if device.type == "cpu" else None,
    }
    for method in names:
        out[method] = {
            "wall": summarise(times[method], times["sgd"]),
            "cpu": summarise(cpu[method], cpu["sgd"]),
        }
    out["vs_reference"] = {}
    for method, ref in PAIRS.items():
        if ref not in steppers:
            continue
        wall, cpu_ = summarise(times[method], times[ref]), summarise(cpu[method], cpu[ref])
        out["vs_reference"][method] = {
            "reference": ref,
            "wall": wall,
            "cpu": cpu_,
            "bar": BAR,
            "met_wall": wall["ratio_median"] <= BAR,
            "met_cpu": cpu_["ratio_median"] <= BAR,
        }
    out["equivalence"] = equivalence
    return out


def summarise(samples: list[float], baseline: list[float]) -> dict[str, float]:
    """Median and min-max of the per-round times and of the per-round ratios to ``baseline``."""
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
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per timed block (default 10 on the Q model, 1 on ResNet-20); 1 interleaves "
        "the methods most finely, so each round's ratios see the same machine state",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["mnist1d_cnn", "resnet20"])
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--optimizer-only",
        action="store_true",
        help="time the steps with fixed gradients instead of forward/backward passes: the "
        "optimizers' own work, which is where the implementations differ",
    )
    for source in SOURCES.values():
        parser.add_argument(
            source.option,
            type=Path,
            default=os.environ.get(source.env) or None,
            metavar="DIR",
            help=f"a checkout of {source.url}: also time and check {source.reference}"
            f" (default: ${source.env})",
        )
    args = parser.parse_args(argv)
    refs: dict[str, Reference] = {}
    for key, source in SOURCES.items():
        directory = getattr(args, source.option.lstrip("-").replace("-", "_"))
        if directory is None:
            continue
        try:
            refs[key] = load_reference(key, Path(directory))
        except ReferenceUnavailable as exc:
            parser.error(str(exc))  # exits with status 2
    missing = [k for k in SOURCES if k not in refs]
    if missing:
        print(skip_line(missing))
    for ref in refs.values():
        if not ref.matches_tested:
            print(
                f"note: {ref.path} is not {ref.source.url} at the tested commit"
                f" {ref.source.tested_commit[:7]} (file hashes differ; see the JSON)"
            )
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    smoke = args.smoke
    batch = 8 if smoke else 128
    settings = {
        "mnist1d_cnn": dict(
            rounds=args.rounds or (2 if smoke else 60), steps=args.steps or (1 if smoke else 10)
        ),
        "resnet20": dict(rounds=args.rounds or (2 if smoke else 30), steps=args.steps or 1),
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
                refs=refs,
                batch=batch,
                rounds=int(cfg["rounds"]),
                steps=int(cfg["steps"]),
                warmup=1 if smoke else 3,
                device=device,
                optimizer_only=args.optimizer_only,
            )
        )
    print_table(rows, refs, smoke)
    passed = all(row["equivalence"]["passed"] for row in rows) if refs else None
    report = {
        "benchmark": "step_cost",
        "smoke": smoke,
        "batch": batch,
        "threads": args.threads,
        "optimizer_only": args.optimizer_only,
        "settings": settings,
        "device": str(device),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "methods": METHODS,
        "optimizer": OPTIMIZER,
        "references": {
            ref.source.reference: {
                "settings": {
                    **SGD_SETTINGS,
                    "base": "torch.optim.SGD",
                    "loss": "cross_entropy",
                    **(
                        {"rho": SAM_RHO, "adaptive": False}
                        if key == "sam"
                        else {"rho": CRAM_RHO, "sparsities": CRAM_SPARSITIES}
                    ),
                },
                **ref.describe(),
            }
            for key, ref in refs.items()
        },
        "references_skipped": [SOURCES[k].reference for k in missing],
        "equivalence_passed": passed,
        "results": rows,
    }
    stem = "step_cost-optimizer" if args.optimizer_only else "step_cost"
    output = args.output or RESULTS / (f"{stem}-smoke.json" if smoke else f"{stem}.json")
    write_payload(report, output, with_machine=False)
    if passed is False:
        print("FAILED: compressor and a reference disagree (see 'equivalence')", file=sys.stderr)
        return 1
    return 0


def print_table(rows: list[dict[str, Any]], refs: dict[str, Reference], smoke: bool) -> None:
    print(
        f"{'model':<12} {'method':<10} {'wall ms':>9} {'min-max':>14} {'wall x SGD':>18}"
        f" {'cpu ms':>9} {'cpu x SGD':>18}"
    )
    for row in rows:
        for method in [*METHODS, *reference_names(refs)]:
            w, c = row[method]["wall"], row[method]["cpu"]
            print(
                f"{row['model']:<12} {method:<10} {w['median_s'] * 1e3:>9.2f}"
                f" {w['min_s'] * 1e3:>6.1f}-{w['max_s'] * 1e3:<7.1f}"
                f" {w['ratio_median']:>6.3f} ({w['ratio_min']:.2f}-{w['ratio_max']:.2f})"
                f" {c['median_s'] * 1e3:>9.2f}"
                f" {c['ratio_median']:>6.3f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f})"
            )
        if row["mask_s"] is not None:
            print(f"{row['model']:<12} one global magnitude mask: {row['mask_s'] * 1e3:.2f} ms")
    if not refs:
        return
    print()
    print(
        f"{'model':<12} {'compressor / reference':<24} {'wall ratio':>18} {'cpu ratio':>18}"
        f"  bar <= {BAR:.2f}"
    )
    for row in rows:
        for method, v in row["vs_reference"].items():
            w, c = v["wall"], v["cpu"]
            met = "met" if v["met_wall"] and v["met_cpu"] else "not met"
            met += " (smoke: not a measurement)" if smoke else ""
            print(
                f"{row['model']:<12} {method + ' / ' + v['reference']:<24}"
                f" {w['ratio_median']:>6.3f} ({w['ratio_min']:.2f}-{w['ratio_max']:.2f})"
                f" {c['ratio_median']:>6.3f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f})"
                f"  {met}"
            )
    print()
    for row in rows:
        eq = row["equivalence"]
        head = f"{row['model']:<12} equivalence (one step, same weights and batch, atol {ATOL:g}):"
        parts = []
        if "sam" in eq:
            sam = eq["sam"]
            parts.append(
                f"sam max|dw| {sam['max_abs_diff']:.1e} {'ok' if sam['equal'] else 'DIFFERENT'}"
            )
        if "cram+" in eq:
            cram = eq["cram+"]
            parts.append(
                f"cram+ at s={cram['sparsity']:.4f} (kept {cram['kept_compressor']}"
                f" / {cram['kept_reference']}) max|dw| {cram['max_abs_diff']:.1e}"
                f" {'ok' if cram['equal'] else 'DIFFERENT'}"
            )
        print(f"{head} {'; '.join(parts)}")
        for t in eq.get("cram+_timed_sparsities", []):
            print(
                f"{'':<12}   cram+ at s={t['sparsity']:g}: kept {t['kept_compressor']} (compressor)"
                f" / {t['kept_reference']} (reference), {t['mask_differences']} mask entries"
                f" differ, max|dw| {t['max_abs_diff']:.1e} (reported, not checked)"
            )
        buffers = sorted(
            {b for k in ("sam", "cram+") if k in eq for b in eq[k]["buffers_differing"]}
        )
        if buffers:
            kinds = sorted({b.rsplit(".", 1)[-1] for b in buffers})
            print(f"{'':<12}   BN buffers differing (expected, not checked): {', '.join(kinds)}")


if __name__ == "__main__":
    raise SystemExit(main())
