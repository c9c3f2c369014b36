"""``compressor.compress(model, recipe, calibration=...)``: post-training compression in one call
(issue 23's one-liner; the core names no built-in type, so not after the one-shot modifier).

The recipe needs only its compression section (``name`` and ``modifiers``, typically one
one-shot modifier with a data-aware operator); no model, data, optimizer or training is
read. The model is compressed in place by a :class:`Session` whose calibration source is the
given batches of model inputs (all of them, as one fixed set: the operators' ``samples`` and
``seed`` do not subsample it). With ``evaluate`` (model -> float, e.g. perplexity on held-out
data) the report holds the metric before and after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.engine.session import Session
from compressor.host.manager import Plugins, load_plugins
from compressor.recipe.schema import Recipe, load_recipe, recipe_from_text

__all__ = ["compress"]


def as_recipe(recipe: Recipe | str | Path | Mapping[str, Any], plugins: Plugins) -> Recipe:
    """A recipe object, file path, YAML text or mapping, validated against ``plugins``."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return recipe_from_text(yaml.safe_dump(dict(recipe)), registries=plugins.registries)
    if isinstance(recipe, Path) or "\n" not in recipe:
        return load_recipe(recipe, registries=plugins.registries)
    return recipe_from_text(recipe, registries=plugins.registries)


def compress(
    model: nn.Module,
    recipe: Recipe | str | Path | Mapping[str, Any],
    calibration: Iterable[Any],
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: Callable[[str, float], None] | None = None,
    plugins: Plugins | None = None,
) -> dict[str, Any]:
    """Compress ``model`` in place by the recipe's step-0 modifiers; returns a report
    (seconds, sparsity over the compressed tensors, per-layer sparsity, metric before/after).
    ``progress(label, seconds)`` is given to every operator that reports progress (the
    data-aware ones: after each block)."""
    plugins = plugins or load_plugins()
    parsed = as_recipe(recipe, plugins)
    if not parsed.config.modifiers:
        raise CompressorError("compress: the recipe has no modifiers (nothing to compress)")
    batches = list(calibration)
    if not batches:
        raise CompressorError("compress: the calibration data is empty")
    session = Session(
        model, parsed, steps_per_epoch=1, plugins=plugins, calibration=fixed_source(batches)
    )
    return compress_session(session, evaluate=evaluate, progress=progress)


def fixed_source(batches: list[Any]) -> Callable[[int, int, int, int], Iterator[Any]]:
    """A session's calibration source that gives ``batches`` whatever is asked."""

    def source(samples: int, seed: int, count: int, size: int) -> Iterator[Any]:
        return iter(batches)

    return source


def compress_session(
    session: Session,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """:func:`compress` on a session already built (e.g. one that is also an evaluation
    context for an exporter, as ``compressor compress`` builds)."""
    model = session.model
    before = evaluate(model) if evaluate is not None else None
    start = time.perf_counter()
    for modifier in session.modifiers:
        operator = getattr(modifier, "operator", None)
        if progress is not None and hasattr(operator, "progress"):
            operator.progress = progress  # type: ignore[union-attr]
    session.begin()
    seconds = time.perf_counter() - start
    after = evaluate(model) if evaluate is not None else None
    stats = session.sparsity()
    return {
        "recipe": session.recipe.config.name,
        "seconds": seconds,
        "sparsity": stats["global"],
        "per_layer": stats["per_layer"],
        "metric": {"before": before, "after": after},
    }
