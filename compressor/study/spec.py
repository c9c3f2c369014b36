"""Studies: which recipes to compare, on which seeds, with which shared settings.

A study is YAML validated like a recipe::

    version: 1
    name: mnist1d
    seeds: [0, 1]
    shared:                       # merged into every recipe (wins), so the comparison is fair
      data: {name: mnist1d, samples: 20000}
      train: {epochs: 8}
    baseline: sgd-mnist1d         # ratios (step time) are against this label; default the first
    recipes:
      - ../sgd-mnist1d.yaml       # a path (relative to the study file) ...
      - path: ../gmp-mnist1d.yaml # ... or a mapping with a label and dotted overrides
        label: GMP 90%
        set: ["modifiers.0.schedule.end=5ep"]

Each (recipe, seed) becomes one :class:`Trial` with a fully validated recipe.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compressor.contract.errors import Problem, RecipeError, did_you_mean
from compressor.host.registry import Registries
from compressor.recipe.schema import Recipe, apply_overrides, validate_source, validation_problems
from compressor.recipe.source import Source, read_yaml


class StudyRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    label: str | None = None
    set: list[str] = Field(default_factory=list)


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    shared: dict[str, Any] = Field(default_factory=dict)
    baseline: str | None = Field(None, description="label ratios are taken against")
    recipes: list[StudyRecipe] = Field(min_length=1)

    @field_validator("recipes", mode="before")
    @classmethod
    def _paths_as_mappings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value


@dataclass(frozen=True)
class Trial:
    """One run of a study: a label, a seed and the recipe to run."""

    label: str
    seed: int
    recipe: Recipe

    @property
    def key(self) -> str:
        return f"{self.label}/seed{self.seed}"

    @property
    def folder(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.label).strip('-')}-seed{self.seed}"


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    seeds: list[int]
    trials: list[Trial]
    labels: list[str]
    baseline: str
    """The label ratios are taken against (the study's ``baseline:``, else the first)."""


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` wins; mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _trial_recipe(
    source: Source, shared: dict[str, Any], overrides: list[str], seed: int, registries: Registries
) -> Recipe:
    data = deep_merge(source.data, shared)
    try:
        data = apply_overrides(data, [*overrides, f"train.seed={seed}"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RecipeError(
            [Problem(source.file, 1, 1, "", f"bad override for this recipe: {exc}")]
        ) from None
    return validate_source(Source(source.file, data, source.values, source.keys), registries)


def build_study(
    config: StudyConfig,
    base_dir: Path,
    registries: Registries,
    *,
    seeds: list[int] | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
    source: Source | None = None,
) -> Study:
    seeds = seeds or list(config.seeds)
    trials: list[Trial] = []
    labels: list[str] = []
    for item in config.recipes:
        source = read_yaml(base_dir / item.path)
        label = item.label or str(source.data.get("name", Path(item.path).stem))
        if label in labels:
            raise RecipeError(
                [Problem(source.file, 1, 1, "", f"two recipes in the study are labelled '{label}'")]
            )
        labels.append(label)
        for seed in seeds:
            recipe = _trial_recipe(source, config.shared, [*item.set, *overrides], seed, registries)
            trials.append(Trial(label, seed, recipe))
    baseline = config.baseline or labels[0]
    if baseline not in labels:
        message = (
            f"no recipe is labelled '{baseline}'{did_you_mean(baseline, labels)}; "
            f"labels: {', '.join(labels)}"
        )
        if source is not None:
            raise source.error(("baseline",), message)
        raise RecipeError([Problem("<study>", 1, 1, "baseline", message)])
    return Study(config.name, config.description, seeds, trials, labels, baseline)


def load_study(
    path: str | Path,
    registries: Registries,
    *,
    seeds: list[int] | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
) -> Study:
    """Read a study file and validate every recipe in it (with shared settings and seeds)."""
    source = read_yaml(path)
    try:
        config = StudyConfig.model_validate(source.data)
    except ValidationError as exc:
        raise RecipeError(validation_problems(exc, source, StudyConfig)) from None
    return build_study(
        config, Path(path).parent, registries, seeds=seeds, overrides=list(overrides), source=source
    )


def adhoc_study(
    paths: list[str], registries: Registries, *, seeds: list[int], overrides: list[str]
) -> Study:
    """``compressor compare a.yaml b.yaml --seeds 0 1``: a study without a study file."""
    config = StudyConfig(
        name="compare",
        recipes=[StudyRecipe(path=str(Path(p).resolve())) for p in paths],
        seeds=seeds or [0],
    )
    return build_study(config, Path("."), registries, seeds=seeds, overrides=overrides)
