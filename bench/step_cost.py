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
import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/step_cost.py` from anywhere
    sys.path.insert(0, str(ROOT))

from compressor import Session  # noqa: E402
from compressor.recipe.schema import recipe_from_text  # noqa: E402
from compressor_plugins.zoo.models import MNIST1DCNN  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# One set of hyperparameters for compressor's recipes and the references alike.
SGD_SETTINGS: dict[str, Any] = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
SAM_RHO = 0.05
CRAM_RHO = 0.05
CRAM_SPARSITIES = [0.5, 0.7, 0.9]


def _flow(fields: dict[str, Any]) -> str:
    """A YAML flow mapping (JSON scalars and lists are valid YAML)."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "}"


def cram_wrapper(sparsities: list[float]) -> str:
    return (
        f"{{name: cram, rho: {json.dumps(CRAM_RHO)}, plus: true, sparse_grad: true,"
        f" operator: {{kind: magnitude, scope: global}}, sparsities: {json.dumps(sparsities)}}}"
    )


OPTIMIZER = _flow({"name": "sgd", **SGD_SETTINGS})
METHODS: dict[str, str | None] = {
    "sgd": None,
    "sam": f"{{name: sam, rho: {json.dumps(SAM_RHO)}}}",
    "cram+": cram_wrapper(CRAM_SPARSITIES),
}
PAIRS = {"sam": "sam-ref", "cram+": "cram+-ref"}  # compressor method -> its reference
BAR = 1.00  # compressor / reference, median of per-round ratios
ATOL = 1e-6


# -- the released reference code, imported from the user's checkouts ---------------------------


@dataclass(frozen=True)
class Source:
    """One released repository: where to get it, what is imported, what was tested."""

    key: str  # "sam" | "cram"
    reference: str  # the benchmark row it provides
    option: str
    env: str
    url: str
    license: str
    tested_commit: str
    # file -> SHA-256 at the tested commit; ``imported`` are run, ``loop`` is followed here
    imported: dict[str, str]
    loop: dict[str, str]


SOURCES: dict[str, Source] = {
    "sam": Source(
        key="sam",
        reference="sam-ref",
        option="--sam-repo",
        env="COMPRESSOR_REF_SAM",
        url="https://github.com/davda54/sam",
        license="MIT",
        tested_commit="3c3afdbd71cff2462ec91c734b3d1170bd0f3707",
        imported={
            "sam.py": "768134da1d5f3ff630d7f29958a960c6335410875b05424f851602b344f8c9ec",
            "example/utility/bypass_bn.py": (
                "36dfdcb454cb05a9e1c344b17d7f90694e836494b379a69b85a72569e4064372"
            ),
        },
        loop={
            "example/train.py": "606c7598fcd12e4abfc282555d89afed387d47971a5758a10e3c902bfe949af7"
        },
    ),
    "cram": Source(
        key="cram",
        reference="cram+-ref",
        option="--cram-repo",
        env="COMPRESSOR_REF_CRAM",
        url="https://github.com/IST-DASLab/CrAM",
        license="Apache-2.0",
        tested_commit="b89d9ff2b0c7d343736d587dd27f95d86a2df1cf",
        imported={
            "optimization/custom_optimizers.py": (
                "3c73c70f98280770f2d7035de7505bd3f7aa0075e9b81bc93e2569d04dd751a3"
            ),
            "utils/utils.py": "e1f47ba717deb0d9156f0d2842c1d5b5e8991b08737fd64d585567e15a84c9c9",
            "utils/bypass_bn.py": (
                "d5debbe242ed97bf5da84558d2654ad4838416ef26e2ba3c4ed858cd55e12ff0"
            ),
        },
        loop={"manager.py": "3625e67a54ac476deb05b61164efd1fe8e4357250f794c24cd7718ccdbe011db"},
    ),
}


class ReferenceUnavailable(Exception):
    """A checkout that cannot be used (missing files, a package it needs not installed)."""


@dataclass
class Reference:
    """A loaded checkout: its modules and where they came from."""

    source: Source
    path: Path
    modules: dict[str, ModuleType]
    commit: str | None
    files: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 as found

    @property
    def matches_tested(self) -> bool:
        return self.files == {**self.source.imported, **self.source.loop}

    def describe(self) -> dict[str, Any]:
        return {
            "repository": self.source.url,
            "license": self.source.license,
            "path": str(self.path),
            "commit": self.commit,
            "tested_commit": self.source.tested_commit,
            "files_sha256": self.files,
            "matches_tested": self.matches_tested,
            "imported": sorted(self.source.imported),
            "loop_followed": sorted(self.source.loop),
        }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_commit(path: Path) -> str | None:
    """The checkout's HEAD when ``path`` is the top of a git checkout, else None."""
    if not (path / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@contextlib.contextmanager
def _modules_as(names: dict[str, ModuleType]) -> Iterator[None]:
    """Make ``names`` importable (``sys.modules``) for the duration, then restore."""
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(names)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _import_file(name: str, path: Path) -> ModuleType:
    """Import one released file under a private module name."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ReferenceUnavailable(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as exc:
        raise ReferenceUnavailable(
            f"{path} needs the package {exc.name!r}, which is not installed"
            f" (pip install {exc.name})"
        ) from exc
    return module


def load_reference(key: str, directory: Path) -> Reference:
    """Import the released files of ``SOURCES[key]`` from the checkout ``directory``."""
    source = SOURCES[key]
    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise ReferenceUnavailable(f"{source.option} {directory}: not a directory")
    missing = [f for f in [*source.imported, *source.loop] if not (directory / f).is_file()]
    if missing:
        raise ReferenceUnavailable(
            f"{source.option} {directory}: not a checkout of {source.url}"
            f" (missing {', '.join(missing)})"
        )
    prefix = f"_compressor_ref_{key}"
    modules: dict[str, ModuleType] = {}
    if key == "sam":
        modules["sam"] = _import_file(f"{prefix}_sam", directory / "sam.py")
        modules["bypass_bn"] = _import_file(
            f"{prefix}_bypass_bn", directory / "example/utility/bypass_bn.py"
        )
    else:
        modules["utils"] = _import_file(f"{prefix}_utils", directory / "utils/utils.py")
        modules["bypass_bn"] = _import_file(f"{prefix}_bypass_bn", directory / "utils/bypass_bn.py")
        # custom_optimizers.py does `from utils import percentile`: serve utils/utils.py
        with _modules_as({"utils": modules["utils"]}):
            modules["custom_optimizers"] = _import_file(
                f"{prefix}_custom_optimizers", directory / "optimization/custom_optimizers.py"
            )
    files = {f: _sha256(directory / f) for f in [*source.imported, *source.loop]}
    return Reference(source, directory, modules, _git_commit(directory), files)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grads = dict[str, torch.Tensor]


def forward_backward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, fixed: Grads | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward pass; returns (loss, output). With ``fixed`` gradients
    (``--optimizer-only``) no pass runs: each parameter's gradient is set to a copy of its fixed
    one, so a step's remaining cost is the optimizer's own work (perturbing, masking,
    restoring, combining and the base step) plus these copies, alike for every method."""
    if fixed is None:
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        return loss, out
    for name, param in model.named_parameters():
        param.grad = fixed[name].clone()
    return torch.zeros((), device=x.device), torch.zeros(y.numel(), 10, device=x.device)


def sam_reference_stepper(
    ref: Reference,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Loss,
    fixed: Grads | None = None,
) -> Callable[[], None]:
    """davda54/sam's ``SAM`` and BN helpers, driven as ``example/train.py``'s batch loop."""
    sam, bypass_bn = ref.modules["sam"], ref.modules["bypass_bn"]
    optimizer = sam.SAM(
        model.parameters(), torch.optim.SGD, rho=SAM_RHO, adaptive=False, **SGD_SETTINGS
    )

    def per_sample_mean(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(out, target).mean()  # the example's loss is per sample: `.mean()`

    def step() -> None:
        # pass 1 at w, BN statistics updated
        bypass_bn.enable_running_stats(model)
        forward_backward(model, x, y, per_sample_mean, fixed)
        optimizer.first_step(zero_grad=True)
        # pass 2 at w + e(w), BN momentum 0
        bypass_bn.disable_running_stats(model)
        forward_backward(model, x, y, per_sample_mean, fixed)
        optimizer.second_step(zero_grad=True)

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def cram_reference_stepper(
    ref: Reference,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Loss,
    sparsities: list[float],
    fixed: Grads | None = None,
) -> Callable[[], None]:
    """IST-DASLab/CrAM's ``TopkCrAM`` (CrAM+ Multi) and BN helpers, driven as
    ``Manager.optimize_minibatch`` (use_sam branch) is, per-step bookkeeping included."""
    custom_optimizers, bypass_bn = ref.modules["custom_optimizers"], ref.modules["bypass_bn"]
    with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints its settings
        optimizer = custom_optimizers.TopkCrAM(
            model.parameters(),
            torch.optim.SGD,
            rho=CRAM_RHO,
            sparsities=list(sparsities),
            grad_norm=False,
            plus_version=True,
            unif_prune=False,
            sparse_grad=True,
            **SGD_SETTINGS,
        )

    def step() -> tuple[float, float]:
        optimizer.zero_grad()
        loss, out = forward_backward(model, x, y, loss_fn, fixed)  # pass 1 at w, BN updated

        def pass_2() -> torch.Tensor:  # the closure TopkCrAM.step runs between its two steps
            return forward_backward(model, x, y, loss_fn, fixed)[0]

        bypass_bn.disable_running_stats(model)  # BN momentum 0 (BatchNorm2d only) for pass 2
        optimizer.step(pass_2)
        bypass_bn.enable_running_stats(model)
        with torch.no_grad():  # what optimize_minibatch returns: loss and batch accuracy
            hits = out.argmax(dim=1, keepdim=True).eq(y.view(-1, 1)).sum().item()
        return loss.item(), hits / y.size(0)

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step  # type: ignore[return-value]


def make_reference(
    refs: dict[str, Reference],
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sparsities: list[float] | None = None,
    fixed: Grads | None = None,
) -> Callable[[], None]:
    if name == "sam-ref":
        return sam_reference_stepper(refs["sam"], model, x, y, F.cross_entropy, fixed)
    if name == "cram+-ref":
        return cram_reference_stepper(
            refs["cram"], model, x, y, F.cross_entropy, sparsities or CRAM_SPARSITIES, fixed
        )
    raise ValueError(name)


def reference_names(refs: dict[str, Reference]) -> list[str]:
    return [SOURCES[k].reference for k in SOURCES if k in refs]


def skip_line(missing: list[str]) -> str:
    """The one line printed when reference rows are skipped."""
    how = " and ".join(
        f"{SOURCES[k].option} DIR (or {SOURCES[k].env}=DIR; DIR a checkout of {SOURCES[k].url})"
        for k in missing
    )
    rows = ", ".join(SOURCES[k].reference for k in missing)
    return (
        f"reference rows skipped ({rows}): to time and check against the released code, pass {how}"
    )


# -- compressor --------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, widths 16/32/64."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20() -> nn.Module:
    try:  # the project's own ResNet-20 when the plugin exists
        from compressor_plugins.zoo import resnet as resnet  # type: ignore[attr-defined]

        return resnet.ResNet20(num_classes=10)  # type: ignore[no-any-return]
    except (ImportError, AttributeError, TypeError):
        return ResNet20()


def make_stepper(
    model: nn.Module,
    wrapper: str | None,
    x: torch.Tensor,
    y: torch.Tensor,
    fixed: Grads | None = None,
) -> Callable[[], None]:
    text = f"name: bench\nmodel: {{name: mlp}}\ndata: {{name: synthetic}}\noptimizer: {OPTIMIZER}\n"
    if wrapper is not None:
        text += f"wrapper: {wrapper}\n"
    session = Session(model, recipe_from_text(text), steps_per_epoch=1000)
    optimizer = session.optimizer()

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        return forward_backward(model, x, y, F.cross_entropy, fixed)[0]

    def step() -> None:
        loss = optimizer.step(closure)
        session.step_end(loss.detach())

    step.session = session  # type: ignore[attr-defined]
    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


# -- equivalence with the references -----------------------------------------------------------


def compare(a: nn.Module, b: nn.Module) -> dict[str, Any]:
    """Parameters (the check) and BN buffers (reported only) of two stepped copies."""
    params = dict(b.named_parameters())
    diff = max(
        float((p.detach() - params[n].detach()).abs().max()) for n, p in a.named_parameters()
    )
    buffers = dict(b.named_buffers())
    differing = sorted(
        n
        for n, t in a.named_buffers()
        if not torch.allclose(t.double(), buffers[n].double(), atol=ATOL, rtol=0)
    )
    return {"max_abs_diff": diff, "equal": diff <= ATOL, "buffers_differing": differing}


def compressor_masks(step: Callable[[], None]) -> dict[str, torch.Tensor]:
    wrapper = step.optimizer.base  # type: ignore[attr-defined]
    return {n: m.to(torch.bool) for n, m in wrapper.masks.items()}


def reference_masks(step: Callable[[], None], model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks TopkCrAM kept in its optimizer state (``state[p]["mask"]``)."""
    state = step.optimizer.state  # type: ignore[attr-defined]
    return {
        n: state[p]["mask"].to(torch.bool)
        for n, p in model.named_parameters()
        if "mask" in state[p]
    }


def cram_pair(
    refs: dict[str, Reference], base: nn.Module, x: torch.Tensor, y: torch.Tensor, sparsity: float
) -> dict[str, Any]:
    """One CrAM+ step each at one fixed ``sparsity``: weights, masks and kept counts."""
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ours = make_stepper(a, cram_wrapper([sparsity]), x, y)
    theirs = make_reference(refs, "cram+-ref", b, x, y, sparsities=[sparsity])
    ours()
    theirs()
    m_ours, m_theirs = compressor_masks(ours), reference_masks(theirs, b)
    result = compare(a, b)
    result.update(
        sparsity=sparsity,
        kept_compressor=int(sum(int(m.sum()) for m in m_ours.values())),
        kept_reference=int(sum(int(m.sum()) for m in m_theirs.values())),
        same_tensors=sorted(m_ours) == sorted(m_theirs),
        mask_differences=sum(
            int((m != m_theirs[n]).sum()) for n, m in m_ours.items() if n in m_theirs
        ),
    )
    result["equal"] = bool(
        result["equal"] and result["same_tensors"] and not result["mask_differences"]
    )
    return result


def agreeing_sparsity(n: int, near: float = 0.7) -> float:
    """A sparsity near ``near`` at which compressor keeps round((1-s)·n) and the release
    ceil((1-s)·n) - 1 weights alike: (1-s)·n a quarter above an integer."""
    kept = max(1, int((1.0 - near) * n))
    return 1.0 - (kept + 0.25) / n


def check_equivalence(
    refs: dict[str, Reference], base: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, Any]:
    """One step of each given reference against compressor from identical weights."""
    out: dict[str, Any] = {"atol": ATOL}
    passed = True
    if "sam" in refs:
        a, b = copy.deepcopy(base), copy.deepcopy(base)
        ours = make_stepper(a, METHODS["sam"], x, y)
        theirs = make_reference(refs, "sam-ref", b, x, y)
        ours()
        theirs()
        out["sam"] = compare(a, b)
        passed = passed and out["sam"]["equal"]
    if "cram" in refs:
        n = sum(p.numel() for p in base.parameters() if p.dim() > 1)
        out["cram+"] = cram_pair(refs, base, x, y, agreeing_sparsity(n))
        # reported, not enforced (the mask size differs at some sparsities)
        out["cram+_timed_sparsities"] = [cram_pair(refs, base, x, y, s) for s in CRAM_SPARSITIES]
        passed = passed and out["cram+"]["equal"]
    out["passed"] = bool(passed)
    return out


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
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
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
