"""Does a model satisfy N:M exactly? :func:`check_nm` per layer, and ``compressor inspect``.

A mask says what training intended; this checks the weights themselves, so it also catches
patterns broken after training (a weight update without masks, a bad merge of checkpoints).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compressor.plugin_api import (
    CompressorError,
    groupable,
    hookimpl,
    input_dim,
    load_checkpoint,
    nm_violations,
    out_in,
    select_targets,
)

Status = Literal["satisfied", "violated", "skipped"]


@dataclass(frozen=True)
class LayerNM:
    """The N:M verdict for one weight tensor."""

    name: str
    shape: tuple[int, ...]
    sparsity: float
    status: Status
    groups: int = 0
    violating_groups: int = 0
    reason: str = ""


def weights_of(model_or_state_dict: nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Linear/Conv weights of a model, or the ``*weight`` tensors with >= 2 dims of a state dict
    (normalisation weights and biases are 1-D and never grouped)."""
    if isinstance(model_or_state_dict, nn.Module):  # [in, out] weights checked as [out, in]
        return {
            t.name: out_in(t.param.detach(), t.transposed)
            for t in select_targets(model_or_state_dict)
        }
    return {
        name: value.detach()
        for name, value in model_or_state_dict.items()
        if isinstance(value, torch.Tensor) and name.endswith("weight") and value.dim() >= 2
    }


def check_nm(
    model_or_state_dict: nn.Module | Mapping[str, Any], keep: int = 2, group: int = 4
) -> dict[str, LayerNM]:
    """Per layer: ``satisfied`` (every group has <= keep non-zeros), ``violated`` or ``skipped``
    (input dimension not a multiple of ``group``)."""
    if not 1 <= keep < group:
        raise ValueError(f"need 1 <= keep < group, got {keep}:{group}")
    out: dict[str, LayerNM] = {}
    for name, weight in weights_of(model_or_state_dict).items():
        shape = tuple(weight.shape)
        sparsity = float((weight == 0).sum().item()) / max(weight.numel(), 1)
        if not groupable(weight, group):
            reason = f"input dim {input_dim(weight)} is not a multiple of {group}"
            out[name] = LayerNM(name, shape, sparsity, "skipped", reason=reason)
            continue
        groups = weight.numel() // group
        bad = nm_violations(weight, keep, group)
        status: Status = "violated" if bad else "satisfied"
        reason = f"{bad} of {groups} groups hold more than {keep} non-zeros" if bad else ""
        out[name] = LayerNM(name, shape, sparsity, status, groups, bad, reason)
    return out


def parse_pattern(text: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``, with the same rules as the ``nm`` operator."""
    try:
        keep, group = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got {text!r}") from None
    if not 1 <= keep < group:
        raise argparse.ArgumentTypeError(f"need 1 <= N < M, got {text}")
    return keep, group


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """A ``.pt`` state dict, or a checkpoint dict whose ``"model"`` entry is one."""
    try:
        data = load_checkpoint(path)
    except FileNotFoundError:
        raise CompressorError(f"no such file: {path}") from None
    except Exception as exc:
        raise CompressorError(f"cannot read {path} as a state dict: {exc}") from None
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise CompressorError(f"{path} holds neither a state dict nor a checkpoint with 'model'")
    return dict(data)


def inspect_command(args: argparse.Namespace) -> int:
    """Print one row per weight; exit 1 if any layer violates the pattern (usable in CI)."""
    from rich.console import Console
    from rich.table import Table

    keep, group = args.nm
    results = check_nm(load_state_dict(args.checkpoint), keep, group)
    table = Table(title=f"{args.checkpoint}: N:M {keep}:{group}")
    for column in ("layer", "shape", "sparsity", f"{keep}:{group}", "detail"):
        table.add_column(column, justify="right" if column == "sparsity" else "left")
    styles = {"satisfied": "green", "violated": "red", "skipped": "yellow"}
    for r in results.values():
        verdict = {"satisfied": "yes", "violated": "NO", "skipped": "skipped"}[r.status]
        table.add_row(
            r.name,
            "x".join(map(str, r.shape)),
            f"{r.sparsity:.2%}",
            f"[{styles[r.status]}]{verdict}[/]",
            r.reason,
        )
    console = Console(width=args.width) if args.width else Console()
    console.print(table)
    counts = {s: sum(r.status == s for r in results.values()) for s in styles}
    console.print(
        f"{counts['satisfied']} satisfied, {counts['violated']} violated, "
        f"{counts['skipped']} skipped"
    )
    return 1 if counts["violated"] else 0


@hookimpl
def register_commands(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = cli.add_parser(
        "inspect",
        help="per-layer sparsity and N:M pattern check of a state dict or checkpoint",
        description="Reads a .pt state dict (or a checkpoint dict with a 'model' key) and "
        "prints, per weight, its sparsity and whether the N:M pattern holds exactly.",
    )
    parser.add_argument("checkpoint", help="a .pt state dict or a checkpoint with a 'model' key")
    parser.add_argument(
        "--nm", type=parse_pattern, default=(2, 4), metavar="N:M", help="pattern (default 2:4)"
    )
    parser.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=inspect_command)
