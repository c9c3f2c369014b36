"""Recipes: YAML validated by a pydantic model assembled from the registries at load time.

The top-level shape is fixed here; every section that names a type (``optimizer``,
``wrapper``, ``lr_schedule``, ``modifiers``, ``model``, ``data``, ``evaluate``, ``log.to`` and
any nested ``operator``/``schedule`` field) is a discriminated union over what plugins
registered.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from compressor.contract.config import RegistryRef, TypeConfig
from compressor.contract.errors import Loc, Problem, RecipeError, data_path, did_you_mean
from compressor.contract.steps import StepSpec
from compressor.host.manager import load_plugins
from compressor.host.registry import Registries, Registry
from compressor.recipe.source import Source, parse_yaml, read_yaml


class TrainConfig(TypeConfig):
    """How long and how to train (the built-in loop); steps are the unit, epochs are sugar."""

    epochs: int = Field(10, gt=0)
    max_steps: int | None = Field(
        None, gt=0, description="stop early after this many steps (smoke runs)"
    )
    seed: int = Field(0, ge=0, lt=2**63, description="model init, data order, every draw")
    eval_every: StepSpec = "1ep"
    checkpoint_every: StepSpec | None = "1ep"
    log_every: int = Field(20, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    device: str = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype; fp16 adds dynamic loss scaling"
    )
    accumulate: int = Field(
        1, gt=0, description="micro-batches per optimizer step (gradient accumulation)"
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a non-finite loss stops the run as failed (stop) or skips the step (skip)",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        import torch

        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"'{device}' is not a torch device (cpu, cuda, cuda:1, mps, ...)"
            ) from None
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"'{device}' asked for, but this machine has no CUDA GPU")
        if parsed.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"'{device}' asked for, but MPS is not available here")
        return device

    init_from: str | None = Field(
        None,
        description="start from these weights (a state dict, or a checkpoint with a 'model' key); "
        "'{seed}' is replaced by train.seed",
    )


OUTCOME_NEUTRAL = ("log",)
"""Sections that cannot change what a run computes (where its metrics are sent): left out of
:meth:`Recipe.hash` and the resume key, so adding a logger neither reruns a study nor refuses
a resume."""


@dataclass
class Recipe:
    """A validated recipe: the typed config plus where it came from."""

    config: Any  # instance of the model built by build_recipe_model
    source: Source

    @property
    def name(self) -> str:
        return str(self.config.name)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.config.model_dump(mode="json"))

    def identity(self) -> dict[str, Any]:
        """The validated recipe without its outcome-neutral sections (``log:``) and without the
        evaluators it leaves unset, so installing one more evaluator plugin changes no hash."""
        identity = {k: v for k, v in self.to_dict().items() if k not in OUTCOME_NEUTRAL}
        if isinstance(identity.get("evaluate"), dict):
            identity["evaluate"] = {k: v for k, v in identity["evaluate"].items() if v is not None}
        return identity

    def hash(self) -> str:
        """sha256 of the validated recipe (defaults filled in) without ``log:``: equal hashes,
        equal runs."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def error(self, loc: Loc, message: str) -> RecipeError:
        """A located error for something found wrong after schema validation."""
        return self.source.error(loc, message)


def registry_union(registry: Registry, resolve: typing.Callable[[Any], Any]) -> Any:
    """Discriminated union of every config registered in ``registry``."""
    members = [resolve(entry.config) for entry in registry]
    if not members:
        return typing.Annotated[TypeConfig, Field(description=f"no {registry.noun} is registered")]
    if len(members) == 1:
        return members[0]
    return Annotated[typing.Union[tuple(members)], Field(discriminator=registry.tag)]  # noqa: UP007


class _Resolver:
    """Swaps ``RegistryRef`` markers in plugin configs for the registered unions."""

    def __init__(self, registries: Registries) -> None:
        self.registries = registries
        self.cache: dict[type, type] = {}

    def resolve(self, tp: Any) -> Any:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            base, *meta = typing.get_args(tp)
            refs = [m for m in meta if isinstance(m, RegistryRef)]
            if refs:
                return registry_union(self.registries.by_kind(refs[0].kind), self.resolve)
            return Annotated[(self.resolve(base), *meta)]  # type: ignore[valid-type]
        if origin in (list, tuple, dict) or origin in (typing.Union, types.UnionType):
            old_args = typing.get_args(tp)
            args = tuple(self.resolve(a) for a in old_args)
            if all(a is b for a, b in zip(args, old_args, strict=True)):
                return tp
            if origin in (typing.Union, types.UnionType):
                return typing.Union[args]  # noqa: UP007
            return origin[args] if origin is not list else list[args[0]]  # type: ignore[index,valid-type]
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return self.model(tp)
        return tp

    def model(self, cls: type[BaseModel]) -> type[BaseModel]:
        if cls in self.cache:
            return self.cache[cls]
        self.cache[cls] = cls  # provisional, guards against cycles
        overrides: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            refs = [m for m in info.metadata if isinstance(m, RegistryRef)]
            annotation = info.annotation
            new = (
                registry_union(self.registries.by_kind(refs[0].kind), self.resolve)
                if refs
                else self.resolve(annotation)
            )
            if new is not annotation:
                kept = [m for m in info.metadata if not isinstance(m, RegistryRef)]
                new = Annotated[(new, *kept)] if kept else new  # type: ignore[valid-type]
                overrides[name] = (new, _plain_field(info))
        result = cls
        if overrides:
            result = create_model(  # type: ignore[call-overload]
                cls.__name__,
                __base__=cls,
                __module__=cls.__module__,
                __doc__=cls.__doc__,
                **overrides,
            )
        self.cache[cls] = result
        return result


def resolved_config(registries: Registries, config: type[BaseModel]) -> type[BaseModel]:
    """A plugin's config class with its ``*Spec`` fields bound to the registered unions, for
    validating one config outside a recipe (CLI options, tests)."""
    return _Resolver(registries).model(config)


def _plain_field(info: FieldInfo) -> Any:
    """The field's default and description, without its type metadata (which is replaced)."""
    kwargs: dict[str, Any] = {
        "description": info.description,
        "validate_default": info.validate_default,
    }
    if info.default_factory is not None:
        kwargs["default_factory"] = info.default_factory
    else:
        kwargs["default"] = info.default
    return Field(**kwargs)


def build_recipe_model(registries: Registries) -> type[BaseModel]:
    """The recipe schema for the plugins loaded now."""
    resolver = _Resolver(registries)
    union = lambda kind: registry_union(registries.by_kind(kind), resolver.resolve)  # noqa: E731

    evaluate_fields: dict[str, Any] = {
        entry.name: (resolver.resolve(entry.config) | None, None) for entry in registries.evaluators
    }
    evaluate_model = create_model(
        "Evaluate",
        __config__=ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False),
        **evaluate_fields,
    )
    log_fields: dict[str, Any] = {
        "every": (
            int | None,
            Field(None, gt=0, description="steps between 'train' rows; default train.log_every"),
        ),
        "to": (list[union("loggers")], Field(default_factory=list)),  # type: ignore[misc]
    }
    log_model = create_model(  # type: ignore[call-overload]
        "Log",
        __base__=TypeConfig,
        __doc__="Where the run's metrics go: rank 0 only, never part of the recipe's hash.",
        **log_fields,
    )

    class RecipeBase(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

        @model_validator(mode="before")
        @classmethod
        def _fill_evaluator_tags(cls, data: Any) -> Any:
            # Under `evaluate:` the key is the evaluator's tag; let users omit `name:`.
            if isinstance(data, dict) and isinstance(data.get("evaluate"), dict):
                section = dict(data["evaluate"])
                for key, value in section.items():
                    if isinstance(value, dict) and "name" not in value:
                        section[key] = {"name": key, **value}
                data = {**data, "evaluate": section}
            return data

    fields: dict[str, Any] = {
        "version": (Literal[1], 1),
        "name": (str, ...),
        "description": (str, ""),
        "model": (union("models") | None, None),
        "data": (union("datasets") | None, None),
        "task": (union("tasks") | None, None),
        "train": (TrainConfig, TrainConfig()),
        "optimizer": (union("optimizers") | None, None),
        "lr_schedule": (union("schedules") | None, None),
        "wrapper": (union("wrappers") | None, None),
        "modifiers": (list[union("modifiers")], []),  # type: ignore[misc]
        "evaluate": (evaluate_model, evaluate_model()),
        "log": (log_model, log_model()),
    }
    return create_model("Recipe", __base__=RecipeBase, **fields)  # type: ignore[no-any-return,call-overload]


def _model_at(root: Any, loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that the error location points into (for did-you-mean)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any, part: str | int) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(tp):
            if isinstance(member, type) and issubclass(member, BaseModel):
                for field in member.model_fields.values():
                    args = typing.get_args(field.annotation)
                    if typing.get_origin(field.annotation) is Literal and part in args:
                        return member
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(non_none[0], part) if len(non_none) == 1 else None
    if origin is list and isinstance(part, int):
        return typing.get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
        info = tp.model_fields.get(part)
        return info.annotation if info else None
    return None


def _message(error: Any, source: Source, model: type[BaseModel], loc: Loc) -> tuple[str, bool]:
    """A human message for one pydantic error, and whether it points at a key."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        owner = _model_at(model, tuple(error["loc"][:-1]))
        allowed = list(owner.model_fields) if owner else []
        return f"unknown key '{key}'{did_you_mean(str(key), allowed)}", True
    if kind == "union_tag_invalid":
        tag = ctx.get("discriminator", "").strip("'")
        expected = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        value = ctx.get("tag")
        noun = _noun(loc[:-1] if loc and loc[-1] == tag else loc, tag)
        return (
            f"unknown {noun} '{value}'{did_you_mean(str(value), expected)}; known: {', '.join(expected)}",
            False,
        )
    if (
        kind == "literal_error"
        and loc
        and loc[-1] in ("kind", "type", "name")
        and loc[0] != "version"
    ):
        # A single registered type gives a plain Literal instead of a tagged union.
        expected = [
            e.strip().strip("'")
            for e in str(ctx.get("expected", "")).replace(" or ", ",").split(",")
        ]
        value = error.get("input")
        noun = _noun(loc[:-1], str(loc[-1]))
        return (
            f"unknown {noun} '{value}'{did_you_mean(str(value), expected)}; known: {', '.join(expected)}",
            False,
        )
    if kind == "union_tag_not_found":
        tag = ctx.get("discriminator", "").strip("'")
        return f"missing '{tag}' (which {_noun(loc, tag)} to use)", False
    if kind == "missing":
        return f"missing required field '{loc[-1] if loc else '?'}'", False
    if kind == "literal_error" and loc and loc[-1] == "version":
        return f"unsupported recipe version; expected {ctx.get('expected')}", False
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message, False


_SECTION_NOUNS = {
    "modifiers": "modifier type",
    "optimizer": "optimizer",
    "wrapper": "optimizer wrapper",
    "model": "model",
    "data": "dataset",
    "task": "task",
    "lr_schedule": "schedule kind",
}


def _noun(loc: Loc, tag: str) -> str:
    """'modifier type', 'operator kind', ... for the object at ``loc`` tagged by ``tag``."""
    named = [part for part in loc if isinstance(part, str)]
    if not named:
        return tag
    if len(named) == 1 and named[0] in _SECTION_NOUNS:
        return _SECTION_NOUNS[named[0]]
    if named == ["log", "to"]:
        return "logger"
    return f"{named[-1]} {tag}"


def validation_problems(
    exc: ValidationError, source: Source, model: type[BaseModel]
) -> list[Problem]:
    """One located problem per distinct pydantic error. A missing field that a misspelt key
    stands for (``optimzer:`` for ``optimizer:``) is one mistake, reported once: at the key."""
    problems: list[Problem] = []
    errors = exc.errors()
    misspelt = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = data_path(source.data, error["loc"])
            owner = _model_at(model, tuple(error["loc"][:-1]))
            fields = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]) if loc else "", fields, n=1, cutoff=0.6)
            if close:
                misspelt.add((*loc[:-1], close[0]))
    for error in errors:
        loc = data_path(source.data, error["loc"])
        if error["type"] == "missing" and loc in misspelt:
            continue
        if error["type"] == "union_tag_invalid":
            tag = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
            loc = (*loc, tag) if (*loc, tag) in source.values else loc
        message, at_key = _message(error, source, model, loc)
        problem = source.problem(loc, message, key=at_key)
        if problem not in problems:
            problems.append(problem)
    return problems


def validate_source(source: Source, registries: Registries) -> Recipe:
    model = build_recipe_model(registries)
    if not isinstance(source.data, dict):
        raise source.error((), "a recipe must be a mapping of sections (name:, model:, data:, ...)")
    if not source.data:
        raise source.error((), "the recipe is empty: it needs at least a name:")
    try:
        config = model.model_validate(source.data)
    except ValidationError as exc:
        raise RecipeError(validation_problems(exc, source, model)) from None
    return Recipe(config=config, source=source)


def load_recipe(path: str | Path, *, registries: Registries | None = None) -> Recipe:
    """Read and validate a recipe file against ``registries`` (default: the installed plugins,
    loaded afresh)."""
    registries = registries or load_plugins().registries
    return validate_source(read_yaml(path), registries)


def recipe_from_text(
    text: str, file: str = "<recipe>", *, registries: Registries | None = None
) -> Recipe:
    registries = registries or load_plugins().registries
    return validate_source(parse_yaml(text, file), registries)
