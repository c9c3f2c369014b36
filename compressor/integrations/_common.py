"""What every integration shares: optional imports, the loop's settings, checkpointed state."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.engine.session import Session
from compressor.host.manager import Plugins
from compressor.recipe.schema import Recipe

T = TypeVar("T")

SESSION_FILE = "compressor_session.pt"
"""The session's state in a Hugging Face Trainer checkpoint folder."""


def require(package: str, extra: str, integration: str) -> ModuleType:
    """Import ``package`` or fail with one line naming the extra(s) that install it
    (``extra`` as pip writes them: ``"hf,accelerate"``)."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise CompressorError(
            f"{integration} needs the optional package '{package}' "
            f"(pip install 'compressor[{extra}]'): {exc}"
        ) from None


@dataclass(frozen=True)
class SessionBuilder:
    """The :class:`Session` arguments an integration is given up front; the session itself is
    built later, once the training loop knows how many optimizer steps it will make."""

    recipe: Recipe
    plugins: Plugins | None = None
    example_inputs: Callable[[int], Any] | None = None

    def build(
        self, model: nn.Module, recipe: Recipe, *, steps_per_epoch: int, total_steps: int
    ) -> Session:
        """The session for ``model``; ``recipe`` is :attr:`recipe` with the loop's settings."""
        return Session(
            model,
            recipe,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            plugins=self.plugins,
            example_inputs=self.example_inputs,
        )


def step_closure(
    micro: Sequence[T],
    zero_grad: Callable[[], None],
    backward: Callable[[T], torch.Tensor],
    no_sync: Callable[[], AbstractContextManager[Any]],
) -> Callable[[], torch.Tensor]:
    """ONE closure for an optimizer step over every micro-batch in ``micro``.

    A two-pass wrapper (SAM, CrAM) calls it twice, so both passes see the whole step's data;
    a loop that steps once per micro-batch group instead would hand the optimizer only the
    last micro-batch. ``backward(batch)`` runs one micro-batch's forward and backward and
    returns its (detached) share of the loss; all but the last run under ``no_sync()``, so
    data parallelism all-reduces once per pass. Returns the step's loss, the sum of shares.
    """
    if not micro:
        raise ValueError("an optimizer step needs at least one micro-batch")

    def closure() -> torch.Tensor:
        zero_grad()
        total: torch.Tensor | None = None
        for j, batch in enumerate(micro):
            last = j == len(micro) - 1
            with contextlib.nullcontext() if last else no_sync():
                share = backward(batch)
            total = share if total is None else total + share
        assert total is not None
        return total

    return closure


def loop_recipe(recipe: Recipe, loop: str, owned: dict[str, tuple[Any, str]]) -> Recipe:
    """``recipe`` with ``train:`` set to what the training loop does.

    ``owned`` maps a ``train:`` field to ``(value, where the loop sets it)``. The loop owns
    these settings (accumulation, precision, clipping): a recipe that leaves a field out gets
    the loop's value; one that sets it to something else is a located error, never silently
    ignored.
    """
    train = recipe.config.train
    for name, (value, where) in owned.items():
        if name in train.model_fields_set and getattr(train, name) != value:
            raise recipe.error(
                ("train", name),
                f"{loop} uses {name} {value!r} ({where}); the recipe says "
                f"{getattr(train, name)!r}: remove it from the recipe or make them agree",
            )
    values = {name: value for name, (value, _) in owned.items()}
    if all(getattr(train, name) == value for name, value in values.items()):
        return recipe
    config = recipe.config.model_copy(update={"train": train.model_copy(update=values)})
    return Recipe(config=config, source=recipe.source)


def refuse_lr_schedule(recipe: Recipe, loop: str, instead: str) -> None:
    if recipe.config.lr_schedule is not None:
        raise recipe.error(
            ("lr_schedule",), f"{loop} owns the learning rate: remove lr_schedule and use {instead}"
        )


def has_wrapper(session: Session) -> bool:
    """Whether the session's optimizer needs ``step(closure)`` (SAM, CrAM, any wrapper)."""
    return session.recipe.config.wrapper is not None


def checkpoint_state(session: Session) -> dict[str, Any]:
    """The session's state without the optimizer's, which the framework saves itself."""
    state = session.state_dict()
    state["optimizer"] = None
    return state


def check_step(session: Session, loop_step: int, loop: str) -> None:
    if session.step != loop_step:
        raise CompressorError(
            f"the session is at step {session.step} but {loop} at optimizer step {loop_step}: "
            "steps_per_epoch must count optimizer steps (micro-batches / accumulation), and "
            "session.step_end() must run once per optimizer step"
        )
