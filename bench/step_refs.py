"""The released SAM and CrAM code for bench/step_cost.py, imported from the user's checkouts
(never vendored): where each comes from, what is imported, and its steps driven as the
released training loops drive them (bench/step_cost.py's docstring says how, and where they differ)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.step_setup import (
    CRAM_RHO,
    CRAM_SPARSITIES,
    SAM_RHO,
    SGD_SETTINGS,
    Grads,
    Loss,
    forward_backward,
)


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
