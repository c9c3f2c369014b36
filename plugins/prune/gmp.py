"""Gradual magnitude pruning and one-shot pruning modifiers (METHODS.md §3).

GMP = operator + schedule: whenever the schedule's target changes inside ``[start, end]``,
masks are recomputed at ``s(t)``; the core applies them to gradients before every step and to
weights after it, so pruned weights stay exactly zero. After ``end`` the masks are frozen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compressor import hookimpl
from compressor.contract.bases import (
    Modifier,
    Operator,
    OperatorSpec,
    ScheduleSpec,
    Sparsity,
    TypeConfig,
)
from compressor.contract.errors import ConfigError
from compressor.contract.steps import StepSpec
from compressor.engine.session import Session


def default_operator() -> dict[str, Any]:
    return {"kind": "magnitude", "scope": "global"}


def apply_masks(session: Session, operator: Operator, sparsity: float | None) -> None:
    """Compute masks on the current weights and hand them to the session's mask set."""
    weights = {t.name: t.param for t in operator.targets}
    for name, mask in operator.masks(weights, sparsity, generator=session.generator).items():
        session.masks.set(name, mask)


def check_fixed(operator: Operator, sparsity: float, loc: tuple[str, ...]) -> None:
    fixed = operator.fixed_sparsity()
    if fixed is not None and abs(fixed - sparsity) > 1e-9:
        raise ConfigError(
            f"the operator's pattern has sparsity {fixed:g}, but {sparsity:g} is asked for", loc
        )


class GMP(Modifier):
    class Config(TypeConfig):
        type: Literal["gmp"]
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        schedule: ScheduleSpec

    def __init__(self, config: Any, session: Session) -> None:
        super().__init__(config, session)
        self.operator = session.build_operator(config.operator)
        self.schedule = session.build_schedule(config.schedule)
        self.start, self.end = self.schedule.span() or (0, session.clock.total_steps)
        self.check_schedule()
        self.current: float | None = None

    def check_schedule(self) -> None:
        """Raise ConfigError when the schedule asks for what the operator cannot give."""
        for step, field in ((self.start, "initial"), (self.end, "final")):
            value = self.schedule(step)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"sparsity must be in [0, 1), got {value:g}", ("schedule", field))
        if self.operator.fixed_sparsity() is not None:
            check_fixed(self.operator, self.schedule(self.end), ("schedule", "final"))

    def prune_to(self, session: Session, target: float) -> None:
        """Set the masks for sparsity ``target`` (subclasses change how)."""
        apply_masks(session, self.operator, target)

    def masked_names(self) -> set[str]:
        return {t.name for t in self.operator.targets}

    def update(self, session: Session) -> None:
        step = session.step
        if step < self.start or step > self.end:
            return
        target = self.schedule(step)
        if target == self.current or (self.current is None and target <= 0.0):
            return
        self.prune_to(session, target)
        self.current = target

    def timeline(self) -> list[tuple[int, str]]:
        rows = [(s, f"target sparsity {self.schedule(s):.4f}") for s in self.schedule.milestones()]
        rows.append((self.end, "masks frozen from here on (fine-tuning)"))
        return rows

    def report(self, session: Session) -> dict[str, Any]:
        return {
            "target_sparsity": self.schedule(self.end),
            "masked_tensors": len(self.masked_names()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = state["current"]


class OneShot(Modifier):
    """Prune once at step ``at``; the masks then stay (fine-tuning keeps them)."""

    class Config(TypeConfig):
        type: Literal["oneshot"]
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        sparsity: Sparsity | None = None
        at: StepSpec = 0

    def __init__(self, config: Any, session: Session) -> None:
        super().__init__(config, session)
        self.operator = session.build_operator(config.operator)
        self.at = session.clock.steps(config.at)
        fixed = self.operator.fixed_sparsity()
        if config.sparsity is None and fixed is None:
            raise ConfigError("this operator needs a target sparsity", ("sparsity",))
        if config.sparsity is not None:
            check_fixed(self.operator, config.sparsity, ("sparsity",))
        self.sparsity = config.sparsity if config.sparsity is not None else fixed
        self.done = False

    def masked_names(self) -> set[str]:
        return {t.name for t in self.operator.targets}

    def update(self, session: Session) -> None:
        if not self.done and session.step >= self.at:
            apply_masks(session, self.operator, self.sparsity)
            self.done = True

    def timeline(self) -> list[tuple[int, str]]:
        return [(self.at, f"prune once to sparsity {self.sparsity:.4f}; masks kept afterwards")]

    def report(self, session: Session) -> dict[str, Any]:
        return {"target_sparsity": self.sparsity}

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state["done"])


@hookimpl
def register_modifiers(register):  # type: ignore[no-untyped-def]
    register(GMP)
    register(OneShot)
