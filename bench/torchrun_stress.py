"""Launch tiny two-process ``torchrun`` jobs many times and count the ones that end badly.

Issue 25 item 1: a rank sometimes died at interpreter exit with ``terminate called without an
active exception`` (SIGABRT) after the run had finished, and ``torchrun`` returned 1. A single
launch almost always succeeds, so this script repeats each kind of job and counts non-zero
exits and abort lines. Kinds: ``run`` (``compressor run`` on a few-step recipe), ``session``
(a user's loop: ``Session`` + ``DistributedDataParallel``) and ``plain`` (the same loop without
compressor, the baseline). Not a timed test: run it by hand, niced, with ``OMP_NUM_THREADS=1``::

    OMP_NUM_THREADS=1 nice python bench/torchrun_stress.py --launches 50
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path, write_payload  # noqa: E402

KINDS = ("run", "session", "plain")
ABORT = "terminate called without an active exception"

RECIPE = """\
version: 1
name: stress
model: {name: mlp, hidden: [8]}
data: {name: synthetic, samples: 32, test_samples: 8, features: 4, classes: 2, batch_size: 4}
train: {epochs: 1, max_steps: 3, seed: 0}
optimizer: {name: sgd, lr: 0.1}
modifiers:
  - type: gmp
    schedule: {kind: cubic, final: 0.5, end: 3, every: 1}
"""

# A user's own loop under torchrun, as docs/distributed.md and docs/data.md describe it.
LOOP = """\
import torch, torch.distributed as dist, torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
SESSION = {session}
dist.init_process_group("gloo")
torch.manual_seed(0)
model = DDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
if SESSION:
    from compressor import Session
    from compressor.recipe.schema import recipe_from_text
    recipe = recipe_from_text('''
name: stress-loop
train: {{epochs: 1}}
optimizer: {{name: sgd, lr: 0.1}}
modifiers: [{{type: gmp, schedule: {{kind: cubic, final: 0.5, end: 3, every: 1}}}}]
''')
    session = Session(model, recipe, steps_per_epoch=3)
    optimizer = session.optimizer()
else:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    x, y = torch.randn(4, 4), torch.randint(0, 2, (4,))

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    if SESSION:
        session.step_end(optimizer.step(closure))
    else:
        optimizer.step(closure)
dist.destroy_process_group()
print("done")
"""


def commands(folder: Path) -> dict[str, list[str]]:
    """The command line of each kind, its files written into ``folder``."""
    recipe = folder / "stress.yaml"
    recipe.write_text(RECIPE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]  # fmt: skip
    out = {"run": [*torchrun, "-m", "compressor.cli", "run", str(recipe), "--quiet",
                   "--overwrite", "--out", str(folder / "run")]}  # fmt: skip
    for kind, session in (("session", True), ("plain", False)):
        script = folder / f"{kind}.py"
        script.write_text(LOOP.format(session=session))
        out[kind] = [*torchrun, str(script)]
    return out


def launch(command: list[str], cwd: Path, timeout: float) -> dict[str, Any]:
    """One launch: its exit code and whether a rank aborted (C++ terminate / SIGABRT)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"code": None, "abort": False, "tail": "timed out"}
    text = done.stdout + done.stderr
    abort = ABORT in text or "SIGABRT" in text or "Signals.SIGABRT" in text
    tail = "" if done.returncode == 0 else text[-1500:]
    return {"code": done.returncode, "abort": abort, "tail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=50, help="launches of each kind")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--smoke", action="store_true", help="2 launches of each kind")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per launch")
    parser.add_argument("--label", default="", help="a note kept in the JSON (e.g. before-fix)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    launches = 2 if args.smoke else args.launches
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="torchrun-stress-") as tmp:
        folder = Path(tmp)
        lines = commands(folder)
        for kind in args.kinds:
            failed, aborted, tails = 0, 0, []
            for i in range(launches):
                result = launch(lines[kind], folder, args.timeout)
                failed += result["code"] != 0
                aborted += result["abort"]
                if result["code"] != 0:
                    tails.append({"launch": i, "code": result["code"], "tail": result["tail"]})
                print(f"{kind} {i + 1}/{launches}: exit {result['code']}", flush=True)
                if result["code"] != 0:
                    print(result["tail"][-800:], flush=True)
            rows[kind] = {"launches": launches, "nonzero": failed, "aborts": aborted,
                          "failures": tails}  # fmt: skip
    print(f"\n{'kind':<10}{'launches':>10}{'non-zero':>10}{'aborts':>10}")
    for kind, row in rows.items():
        print(f"{kind:<10}{row['launches']:>10}{row['nonzero']:>10}{row['aborts']:>10}")
    payload = {"smoke": args.smoke, "label": args.label, "kinds": rows}
    write_payload(payload, args.json or result_path("torchrun_stress"))
    return 0 if all(row["nonzero"] == 0 for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
