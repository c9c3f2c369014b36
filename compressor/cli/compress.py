"""``compressor compress MODEL RECIPE``: post-training compression of a local language model.

The CLI face of :func:`compressor.compress` (issue 23's "one-shot" one-liner; the core names
no built-in type, the one-shot modifier included, so the command is named after the function).
MODEL is a local Hugging Face folder (:mod:`compressor.engine.hf_folder`), or a recipe file
whose ``model:`` section builds the model (through the host, as a run would, reading UTF-8
bytes: 256 token ids unless its config says more); the recipe needs
only ``name`` and ``modifiers``. Calibration and held-out windows come from ``--calibration``
(a text file) or a few of the Python standard library's sources (:mod:`compressor.kit.text`).
Perplexity is measured on the held-out windows before and after; ``--out`` receives
``report.json`` and, with ``--format``, the model written by that exporter (the same code path
as ``compressor export``). Everything is staged: on any error nothing is written, and every
error about the inputs is one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.cli.commands import build_exporter, out, read_recipe
from compressor.contract.errors import CompressorError, InputError, RecipeError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["add_parser", "cmd_compress"]

BYTES = 256  # a recipe's model reads UTF-8 bytes


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "compress",
        help="compress a local Hugging Face language model with a recipe (post-training)",
    )
    p.add_argument(
        "model",
        help="a local Hugging Face folder (config.json + *.safetensors), or a recipe file "
        "whose model: section builds the model (it reads UTF-8 bytes)",
    )
    p.add_argument("recipe", help="a recipe with name and modifiers (e.g. gptq, sparsegpt)")
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="a UTF-8 text file (default: the Python standard library's sources)",
    )
    p.add_argument("--samples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument(
        "--eval-samples", type=int, default=16, help="held-out windows for perplexity (16)"
    )
    p.add_argument("--seed", type=int, default=0, help="the windows' order (default 0)")
    p.add_argument("--out", help="output folder (default runs/<recipe name>)")
    p.add_argument("--format", help="also export the model (an export format, e.g. hf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value",
    )
    p.set_defaults(func=cmd_compress)


def recipe_model(args: argparse.Namespace) -> tuple[nn.Module, int]:
    """``(model, vocabulary size)`` built from MODEL, a recipe file's ``model:`` section, for
    byte-level token data (256 ids unless its config says more)."""
    import torch

    from compressor.contract.data import DataInfo
    from compressor.engine.hf_folder import vocab_size
    from compressor.recipe.source import read_yaml

    data = read_yaml(args.model).data
    spec = data.get("model") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        raise InputError(
            f"{args.model}: MODEL is a Hugging Face folder or a recipe with a model: section"
        )
    info = DataInfo((args.seq_len,), BYTES, torch.int64)
    try:
        model: nn.Module = args.host.build_model(dict(spec), info)
    except InputError:
        raise
    except CompressorError as exc:
        raise InputError(f"{args.model}: model: {exc}") from None
    return model.eval(), vocab_size(model, default=BYTES)


def model_and_windows(
    args: argparse.Namespace,
) -> tuple[nn.Module, int, tuple[Any, Any], str, str]:
    """MODEL loaded, and the calibration / held-out token windows cut from the text:
    ``(model, vocabulary size, (calibration, held_out), text source, tokenizer)``."""
    from compressor.engine.hf_folder import (
        check_ids,
        load_causal_lm,
        tokenizer_of,
        utf8_ids,
        vocab_size,
    )
    from compressor.engine.lm import token_windows
    from compressor.kit.text import stdlib_text

    encode: Callable[[str], torch.Tensor]
    if Path(args.model).is_file():
        model, vocab = recipe_model(args)
        tokenizer, encode = "UTF-8 bytes (a recipe's model)", utf8_ids
    else:
        model = load_causal_lm(args.model)
        vocab = vocab_size(model)
        tokenizer, encode = tokenizer_of(args.model, vocab)
    if args.calibration:
        path = Path(args.calibration)
        if not path.is_file():
            raise InputError(f"calibration text {path} does not exist")
        text, source = path.read_text(encoding="utf-8", errors="replace"), str(path)
    else:
        text = stdlib_text().decode("utf-8", errors="replace")
        source = "the Python standard library's sources"
    ids = encode(text)
    check_ids(ids, vocab, tokenizer)
    calibration, held_out = token_windows(
        ids,
        args.seq_len,
        args.samples,
        args.eval_samples,
        args.seed,
        f"the calibration text ({source})",
    )
    return model, vocab, (calibration, held_out), source, tokenizer


def cmd_compress(args: argparse.Namespace) -> int:
    from compressor.engine.compress import compress_session
    from compressor.engine.lm import TextSession, perplexity
    from compressor.kit.files import atomic_write_text, staged

    for flag, value in (
        ("--samples", args.samples),
        ("--seq-len", args.seq_len),
        ("--eval-samples", args.eval_samples),
    ):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, not {value}")
    recipe = read_recipe(args.recipe, args.plugins.registries, args.set)
    if not recipe.config.modifiers:
        raise InputError(f"{args.recipe}: the recipe has no modifiers (nothing to compress)")
    out_dir = Path(args.out) if args.out else Path("runs") / recipe.name
    if out_dir.exists() and not args.overwrite:
        raise InputError(f"{out_dir} exists: pass --overwrite to replace it")
    exporter = build_exporter(args.plugins, args.format) if args.format else None

    model, vocab, (calibration, held_out), source, tokenizer = model_and_windows(args)
    session = TextSession(model, recipe, calibration, held_out, vocab, plugins=args.plugins)
    out.print(
        f"{recipe.name}: {args.samples} windows of {args.seq_len} tokens from {source} "
        f"({tokenizer}); perplexity on {args.eval_samples} held-out windows",
        markup=False,
        highlight=False,
    )

    def progress(label: str, seconds: float) -> None:
        out.print(f"  {label}: {seconds:.2f} s", markup=False, highlight=False)

    try:
        result = compress_session(
            session, evaluate=lambda m: perplexity(m, held_out), progress=progress
        )
    except (InputError, RecipeError):
        raise
    except CompressorError as exc:  # the recipe does not fit this model: bad input too
        raise InputError(str(exc)) from None
    if exporter is not None:  # after compressing: a format may need the compressed weights
        exporter.check(session, model)
    metric = result["metric"]
    report: dict[str, Any] = {
        "model": str(args.model),
        "recipe": recipe.name,
        "tokenizer": tokenizer,
        "calibration": {
            "source": source,
            "samples": args.samples,
            "seq_len": args.seq_len,
            "held_out": args.eval_samples,
            "seed": args.seed,
        },
        "seconds": result["seconds"],
        "sparsity": result["sparsity"],
        "perplexity": {"before": metric["before"], "after": metric["after"]},
        "export": None,
        "per_layer": result["per_layer"],
    }
    with staged(out_dir) as stage:
        folder = stage / out_dir.name
        folder.mkdir()
        if exporter is not None:
            written = exporter.export(session, model, folder / f"{args.format}{exporter.suffix}")
            report["export"] = {"format": args.format, "path": written.name}
        atomic_write_text(json.dumps(report, indent=2) + "\n", folder / "report.json")
    out.print(
        f"perplexity {metric['before']:.4f} -> {metric['after']:.4f}, sparsity "
        f"{result['sparsity']:.4f}, {result['seconds']:.1f} s; wrote {out_dir}",
        markup=False,
        highlight=False,
    )
    return 0
