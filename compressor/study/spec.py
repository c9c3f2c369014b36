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
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from compressor.contract.errors import Loc, Problem, RecipeError, did_you_mean
from compressor.host.registry import Registries
from compressor.recipe.overrides import OverrideError, apply_overrides
from compressor.recipe.schema import (
    Recipe,
    registry_union,
    validate_source,
    validation_problems,
)
from compressor.recipe.source import Source, read_yaml


class StudyRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    path: str
    label: str | None = None
    set: list[str] = Field(default_factory=list)


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: Literal[1] = 1
    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    shared: dict[str, Any] = Field(default_factory=dict)
    baseline: str | None = Field(None, description="label ratios are taken against")
    recipes: list[StudyRecipe] = Field(min_length=1)
    launcher: dict[str, Any] | None = Field(
        None, description="where the trials run: {name: local, jobs: 2}, {name: submitit, ...}"
    )

    @field_validator("recipes", mode="before")
    @classmethod
    def _paths_as_mappings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value


@dataclass(frozen=True)
class Trial:
    """One run of a study: a label, a seed, the recipe to run and its folder."""

    label: str
    seed: int
    recipe: Recipe
    folder: str

    @property
    def key(self) -> str:
        return f"{self.label}/seed{self.seed}"


def folder_name(label: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', label).strip('-') or 'run'}-seed{seed}"


def unique_folders(labels: list[str]) -> dict[str, str]:
    """A folder stem per label; labels that sanitise alike get a short hash of the label."""
    stems = {label: folder_name(label, 0).removesuffix("-seed0") for label in labels}
    taken = [stem for stem in stems.values()]
    out = {}
    for label, stem in stems.items():
        if taken.count(stem) > 1:
            stem = f"{stem}-{hashlib.sha256(label.encode()).hexdigest()[:6]}"
        out[label] = stem
    return out


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    seeds: list[int]
    trials: list[Trial]
    labels: list[str]
    baseline: str
    """The label ratios are taken against (the study's ``baseline:``, else the first)."""
    launcher: Any = None
    """The study's validated ``launcher:`` config, if it has one."""


TAGS = ("name", "kind", "type", "format")
"""Keys that say which registered type a section is."""


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` wins; mappings merge key by key, everything else is replaced — and so is a
    whole section whose type changes (``shared: {data: {name: text}}`` over a recipe's
    ``mnist1d`` data keeps none of the MNIST-1D fields)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and not _retyped(old, value):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _retyped(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(tag in old and tag in new and old[tag] != new[tag] for tag in TAGS)


def _shared_positions(
    study: Source | None, shared: dict[str, Any]
) -> dict[Loc, tuple[str, int, int]]:
    """Where in the study file every value of ``shared:`` is, keyed by its path in a recipe."""
    if study is None:
        return {}
    out: dict[Loc, tuple[str, int, int]] = {}
    for loc, (line, col) in study.values.items():
        if loc[:1] == ("shared",) and len(loc) > 1:
            out[loc[1:]] = (study.file, line, col)
    return out


def _trial_recipe(
    source: Source,
    shared: dict[str, Any],
    overrides: list[tuple[str, tuple[str, int, int] | None]],
    seed: int,
    registries: Registries,
    study: Source | None,
) -> Recipe:
    """The recipe of one trial: the file, ``shared:`` merged in, the overrides applied, the
    seed set; every problem located where its value was written (recipe or study file)."""
    data = deep_merge(source.data, shared)
    foreign = _shared_positions(study, shared)
    notes: dict[Loc, str] = {}
    for item, where in [*overrides, (f"train.seed={seed}", None)]:
        try:
            data = apply_overrides(data, [item])
        except OverrideError as exc:
            if where is None:
                raise RecipeError([Problem(source.file, 1, 1, "", f"bad override {exc}")]) from None
            raise RecipeError(
                [Problem(where[0], where[1], where[2], "", f"bad override {exc}")]
            ) from None
        keys = tuple(int(k) if k.isdigit() else k for k in item.split("=", 1)[0].strip().split("."))
        if where is not None:
            foreign[keys] = where
            notes[keys] = f"the value comes from set: {item}"
        elif item.startswith("train.seed="):
            pass
        else:
            notes[keys] = f"the value comes from --set {item}"
    merged = Source(source.file, data, source.values, source.keys, foreign, notes)
    return validate_source(merged, registries)


def build_study(
    config: StudyConfig,
    base_dir: Path,
    registries: Registries,
    *,
    seeds: list[int] | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
    study: Source | None = None,
) -> Study:
    seeds = seeds or list(config.seeds)
    pending: list[tuple[str, Source, list[tuple[str, tuple[str, int, int] | None]]]] = []
    labels: list[str] = []
    for index, item in enumerate(config.recipes):
        at = ("recipes", index)
        path = base_dir / item.path
        if study is not None and not path.exists():
            raise study.error((*at, "path") if (*at, "path") in study.values else at,
                              f"no recipe file {path}")  # fmt: skip
        recipe_source = read_yaml(path)
        if not isinstance(recipe_source.data, dict):
            message = f"{item.path} holds a {type(recipe_source.data).__name__}, not a recipe"
            if study is not None:
                raise study.error(at, message)
            raise recipe_source.error((), "a recipe must be a mapping of sections")
        sets: list[tuple[str, tuple[str, int, int] | None]] = []
        for j, text in enumerate(item.set):
            where = study.values.get((*at, "set", j)) if study is not None else None
            sets.append((text, (study.file, *where) if study is not None and where else None))
        sets += [(text, None) for text in overrides]
        # the name the recipe runs under (a --set name=... included) labels it
        named = [
            t.split("=", 1)[1].strip() for t, _ in sets if t.split("=", 1)[0].strip() == "name"
        ]
        name = named[-1] if named else recipe_source.data.get("name", Path(item.path).stem)
        label = item.label or str(name)
        if label in labels:
            message = f"two recipes in the study are labelled '{label}'; give them labels"
            raise (study.error(at, message) if study is not None else RecipeError(
                [Problem(recipe_source.file, 1, 1, "", message)]))  # fmt: skip
        labels.append(label)
        pending.append((label, recipe_source, sets))
    folders = unique_folders(labels)
    trials = [
        Trial(
            label,
            seed,
            _trial_recipe(src, config.shared, sets, seed, registries, study),
            f"{folders[label]}-seed{seed}",
        )  # fmt: skip
        for label, src, sets in pending
        for seed in seeds
    ]
    baseline = config.baseline or labels[0]
    if baseline not in labels:
        message = (
            f"no recipe is labelled '{baseline}'{did_you_mean(baseline, labels)}; "
            f"labels: {', '.join(labels)}"
        )
        if study is not None:
            raise study.error(("baseline",), message)
        raise RecipeError([Problem("<study>", 1, 1, "baseline", message)])
    launcher = None
    if config.launcher is not None:
        launcher = validate_launcher(config.launcher, registries, study)
    return Study(config.name, config.description, seeds, trials, labels, baseline, launcher)


def validate_launcher(data: dict[str, Any], registries: Registries, study: Source | None) -> Any:
    """A ``launcher:`` mapping as the registered launcher's config, errors located in the
    study file (a ``launcher`` key, as the study file has it)."""
    section = create_model(
        "StudyLauncher",
        __config__=ConfigDict(extra="forbid", frozen=True),
        launcher=(registry_union(registries.launchers, lambda tp: tp), ...),
    )
    try:
        return section.model_validate({"launcher": data}).launcher  # type: ignore[attr-defined]
    except ValidationError as exc:
        if study is None:
            raise RecipeError(
                [Problem("<launcher>", 1, 1, "launcher", str(exc.errors()[0]["msg"]))]
            ) from None
        raise RecipeError(validation_problems(exc, study, section)) from None


STUDY_KEYS = {"recipes", "recipe", "seeds", "shared", "baseline", "launcher"}


def is_study(data: Any) -> bool:
    """A study file is a mapping with ``recipes:`` — or, misspelt, study keys and no
    recipe's ``optimizer:`` (so the study gets the did-you-mean, not a recipe error)."""
    if not isinstance(data, dict):
        return False
    return "recipes" in data or ("optimizer" not in data and bool(STUDY_KEYS & set(data)))


def load_study(
    path: str | Path,
    registries: Registries,
    *,
    seeds: list[int] | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
) -> Study:
    """Read a study file and validate every recipe in it (with shared settings and seeds)."""
    source = read_yaml(path)
    if not isinstance(source.data, dict):
        raise source.error((), "a study must be a mapping (name:, recipes:, ...)")
    try:
        config = StudyConfig.model_validate(source.data)
    except ValidationError as exc:
        raise RecipeError(validation_problems(exc, source, StudyConfig)) from None
    return build_study(
        config, Path(path).parent, registries, seeds=seeds, overrides=list(overrides), study=source
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
