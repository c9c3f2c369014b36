"""ADMM training onto micro-structured pruning + weight unification (METHODS.md §8).

Minimise ``L(W)`` subject to "per layer ``floor(r_p·Nb)`` blocks zero and ``floor(r_u·Nb)``
blocks unified" with an auxiliary ``Z`` (feasible) and a scaled dual ``U``:

* W-step: ordinary training on ``L(W) + Σ rho/2·||W - Z + U||²`` (:meth:`ADMM.penalty`, added
  to the loss by the user's closure through ``session.penalty()``);
* every ``update_every`` steps: ``Z = Π(W + U)``, ``U = U + W - Z``, then
  ``rho <- min(rho·multiplier, cap)`` and, with ``rescale_dual``, ``U <- U·rho_old/rho_new``
  (the unscaled dual ``rho·U`` is what must carry over);
* at ``finish_at``: hard projection ``W <- Π(W)``, labels frozen, pruned entries handed to the
  session's mask set (zero gradients and weights every step), and unified blocks re-imposed
  after every optimizer step, either frozen or with one trainable magnitude per block
  (``a_b = max(0, mean(s_b ⊙ w_b))``: for plain SGD exactly a gradient step on ``a_b`` with
  step size ``lr/n``). Re-imposing after the step is what defeats Adam moments and decoupled
  weight decay, which move entries whose gradient is zero.

Z, U, rho, labels, the frozen anchor and the residual history are in :meth:`state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compressor.plugin_api import (
    CompressionContext,
    ConfigError,
    Modifier,
    StepSpec,
    TypeConfig,
    epochs_of,
    hookimpl,
)
from compressor_plugins.blocks.unify import (
    FREE,
    PRUNED,
    UNIFIED,
    Unify,
    UnifyConfig,
    UnifyFields,
    apply_labels,
    block_count,
    magnitudes,
    sigma,
)
from compressor_plugins.blocks.view import BlockLayout, from_blocks, to_blocks


class RhoConfig(TypeConfig):
    """Penalty weight: starts at ``initial``, times ``multiplier`` after each update, up to ``cap``."""

    initial: float = Field(1e-3, gt=0)
    multiplier: float = Field(1.3, ge=1.0)
    cap: float | None = Field(1.0, gt=0)
    rescale_dual: bool = True

    @model_validator(mode="after")
    def _cap_above_initial(self) -> RhoConfig:
        if self.cap is not None and self.cap < self.initial:
            raise ValueError(f"rho cap {self.cap:g} is below initial {self.initial:g}")
        return self

    def next(self, rho: float) -> float:
        new = rho * self.multiplier
        return min(new, self.cap) if self.cap is not None else new


class ADMMConfig(UnifyFields):
    type: Literal["admm"]
    prune_ratio: float = Field(0.5, ge=0.0, lt=1.0)
    rho: RhoConfig = Field(default_factory=RhoConfig)
    update_every: StepSpec = "1ep"
    finish_at: StepSpec | None = Field(
        None, description="hard projection + masked fine-tuning from here (default 2/3 of training)"
    )
    unified: Literal["frozen", "shared_magnitude"] = "shared_magnitude"
    weight_bits: int = Field(32, gt=0, description="b: bits per free weight (storage metric)")
    magnitude_bits: int = Field(32, gt=0, description="q: bits per shared magnitude")


def _sq(x: torch.Tensor) -> float:
    return float(x.detach().double().pow(2).sum())


class ADMM(Modifier):
    """ADMM towards pruned + unified blocks, then hard projection and masked fine-tuning."""

    Config = ADMMConfig

    def __init__(self, config: Any, context: CompressionContext) -> None:
        super().__init__(config, context)
        c = config
        operator_config = UnifyConfig(
            kind="unify", **{name: getattr(c, name) for name in UnifyFields.model_fields}
        )
        self.operator: Unify = context.build_operator(operator_config, at=())  # type: ignore[assignment]
        transposed = [t.name for t in self.operator.targets if t.transposed]
        if transposed:
            raise ConfigError(
                f"ADMM works on [out, in] weights; exclude the [in, out] (Hugging Face Conv1D) "
                f"layers: {', '.join(transposed)}"
            )
        self.params = {t.name: t.param for t in self.operator.targets}
        if epochs_of(c.update_every) == 0 or c.update_every == 0:
            raise ConfigError("update_every must be positive", ("update_every",))
        self.every = max(1, context.clock.steps(c.update_every))  # a fraction of a step: every step
        self.finish = context.clock.steps(c.finish_at, (2 * context.clock.total_steps) // 3)
        self.rho = float(c.rho.initial)
        self.Z: dict[str, torch.Tensor] | None = None
        self.U: dict[str, torch.Tensor] | None = None
        self.labels: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []
        self.finished = False
        self.anchor: dict[str, torch.Tensor] = {}
        self.finish_info: dict[str, float] = {}

    def masked_names(self) -> set[str]:
        return set(self.params)

    def layout(self, name: str) -> BlockLayout:
        return self.operator.layout(self.params[name])

    # -- the ADMM phase ----------------------------------------------------------------------

    def update(self, context: CompressionContext) -> None:
        if self.finished:
            return
        step = context.step
        if step >= self.finish:
            self._finish(step, context)
        elif self.Z is None:
            self._start(step)
        elif step > 0 and step % self.every == 0:
            self._admm_update(step)

    @torch.no_grad()
    def _start(self, step: int) -> None:
        weights = {n: p.detach() for n, p in self.params.items()}
        self.labels = self.operator.labels(weights)
        self.Z = {n: apply_labels(w, self.layout(n), self.labels[n]) for n, w in weights.items()}
        self.U = {n: torch.zeros_like(w) for n, w in weights.items()}
        self._log(step, changed=0)

    @torch.no_grad()
    def _admm_update(self, step: int) -> None:
        assert self.Z is not None and self.U is not None
        shifted = {n: p.detach() + self.U[n] for n, p in self.params.items()}
        labels = self.operator.labels(shifted)
        changed = sum(int((labels[n] != self.labels[n]).sum()) for n in labels)
        self.labels = labels
        for n, p in self.params.items():
            self.Z[n] = apply_labels(shifted[n], self.layout(n), labels[n])
            self.U[n] = self.U[n] + p.detach() - self.Z[n]
        self._log(step, changed)
        new = self.config.rho.next(self.rho)
        if self.config.rho.rescale_dual and new != self.rho:
            for n in self.U:
                self.U[n] = self.U[n] * (self.rho / new)
        self.rho = new

    def _log(self, step: int, changed: int) -> None:
        assert self.Z is not None
        gap = sum(_sq(p - self.Z[n]) for n, p in self.params.items())
        norm = sum(_sq(p) for p in self.params.values())
        self.history.append(
            {
                "step": step,
                "rho": self.rho,
                "primal": math.sqrt(gap),
                "residual": math.sqrt(gap / norm) if norm > 0 else 0.0,
                "labels_changed": changed,
            }
        )

    def penalty(self, context: CompressionContext) -> torch.Tensor | None:
        """``Σ rho/2·||W - Z + U||²``; its gradient is ``rho·(W - Z + U)``."""
        if self.finished or self.Z is None or self.U is None:
            return None
        terms = [(p - self.Z[n] + self.U[n]).pow(2).sum() for n, p in self.params.items()]
        return 0.5 * self.rho * torch.stack(terms).sum()

    # -- hard projection and masked fine-tuning ----------------------------------------------

    @torch.no_grad()
    def _finish(self, step: int, context: CompressionContext) -> None:
        before = context.evaluate()
        weights = {n: p.detach() for n, p in self.params.items()}
        self.labels = self.operator.labels(weights)
        gap = norm = 0.0
        for n, p in self.params.items():
            projected = apply_labels(p, self.layout(n), self.labels[n])
            gap += _sq(p - projected)
            norm += _sq(p)
            p.copy_(projected)
            self.anchor[n] = projected.clone()
            context.masks.set(n, self.operator.pruned_mask(p, self.labels[n]))
        last = self.history[-1]["residual"] if self.history else float("nan")
        self.finish_info = {
            "step": step,
            "projection_distance": math.sqrt(gap / norm) if norm > 0 else 0.0,
            "residual_before": last,
        }
        after = context.evaluate()
        if before is not None and after is not None:
            self.finish_info["accuracy_before_projection"] = before["test_accuracy"]
            self.finish_info["accuracy_after_projection"] = after["test_accuracy"]
        self.finished = True
        self.Z = self.U = None

    @torch.no_grad()
    def after_optimizer_step(self, context: CompressionContext) -> None:
        if self.finished:
            for name in self.params:
                self._reimpose(name)

    def _reimpose(self, name: str) -> None:
        param, layout, labels = self.params[name], self.layout(name), self.labels[name]
        blocks = to_blocks(param.detach(), layout)
        anchor = to_blocks(self.anchor[name], layout)
        unified = labels == UNIFIED
        if self.config.unified == "frozen":
            blocks[unified] = anchor[unified]
        else:
            valid = layout.valid(param.device)[unified]
            signs = sigma(anchor[unified]).masked_fill(~valid, 0.0)
            counts = valid.sum(dim=1).to(blocks.dtype)
            a = ((signs * blocks[unified]).sum(dim=1) / counts).clamp(min=0.0)
            blocks[unified] = signs * a[:, None]
        blocks[labels == PRUNED] = 0.0
        param.copy_(from_blocks(blocks, layout))

    # -- reporting ---------------------------------------------------------------------------

    def timeline(self) -> list[tuple[int, str]]:
        r = self.config.rho
        rows = [(0, f"ADMM starts: Z = Π(W), U = 0, rho {r.initial:g}")]
        if r.cap is not None and r.multiplier > 1 and self.every < self.finish:
            updates = math.ceil(math.log(r.cap / r.initial) / math.log(r.multiplier))
            rows.append((updates * self.every, f"rho reaches cap {r.cap:g}"))
        rows.append(
            (
                self.finish,
                f"hard projection; masked fine-tuning, unified blocks {self.config.unified}",
            )
        )
        return rows

    def structure(self) -> dict[str, Any]:
        """Exact block counts, compression ratio, storage bits and multiplies, verified on the
        tensor that carries the structure (W after the finish, Z before it)."""
        c = self.config
        source = (
            {n: p.detach() for n, p in self.params.items()} if self.finished else (self.Z or {})
        )
        per_layer: dict[str, dict[str, Any]] = {}
        totals = dict.fromkeys(
            ("blocks", "pruned", "unified", "target_pruned", "target_unified", "weights",
             "stored", "bits", "saved"),
            0,
        )  # fmt: skip
        for name, tensor in source.items():
            layout, labels = self.layout(name), self.labels[name]
            blocks = to_blocks(tensor, layout)
            valid = layout.valid(tensor.device)
            counts = valid.sum(dim=1)
            _, uniform = magnitudes(blocks, valid)
            pruned = int(((labels == PRUNED) & (blocks == 0).all(dim=1)).sum())
            unified = int(((labels == UNIFIED) & uniform).sum())
            free_entries = int(counts[labels == FREE].sum())
            unified_entries = int(counts[labels == UNIFIED].sum())
            ku = int((labels == UNIFIED).sum())  # what the format stores, verified or not
            nb = layout.num_blocks
            row = {
                "blocks": nb,
                "pruned": pruned,
                "unified": unified,
                "target_pruned": block_count(c.prune_ratio, nb),
                "target_unified": block_count(c.unify_ratio, nb),
                "weights": tensor.numel(),
                "stored": free_entries + ku,
                "bits": 2 * nb
                + ku * c.magnitude_bits
                + unified_entries
                + free_entries * c.weight_bits,
                "saved": int(counts[labels == PRUNED].sum()) + unified_entries - ku,
            }
            per_layer[name] = {
                **row,
                "pruned_fraction": pruned / nb,
                "unified_fraction": unified / nb,
                "compression_ratio": row["weights"] / max(row["stored"], 1),
            }
            for key in totals:
                totals[key] += row[key]
        if not per_layer:
            return {}

        def ratio(a: float, b: float) -> float:
            return a / b if b else 1.0

        return {
            "blocks": totals["blocks"],
            "pruned_blocks": totals["pruned"],
            "unified_blocks": totals["unified"],
            "target_pruned_blocks": totals["target_pruned"],
            "target_unified_blocks": totals["target_unified"],
            "pruned_fraction": totals["pruned"] / totals["blocks"],
            "unified_fraction": totals["unified"] / totals["blocks"],
            "target_pruned_fraction": totals["target_pruned"] / totals["blocks"],
            "target_unified_fraction": totals["target_unified"] / totals["blocks"],
            "pruned_of_target": ratio(totals["pruned"], totals["target_pruned"]),
            "unified_of_target": ratio(totals["unified"], totals["target_unified"]),
            "compression_ratio": totals["weights"] / max(totals["stored"], 1),
            "storage_bits": totals["bits"],
            "dense_bits": totals["weights"] * c.weight_bits,
            "storage_ratio": totals["weights"] * c.weight_bits / max(totals["bits"], 1),
            "multiplies_dense": totals["weights"],
            "multiplies_saved": totals["saved"],
            "multiplies_saved_fraction": totals["saved"] / totals["weights"],
            "per_layer": per_layer,
        }

    def report(self, context: CompressionContext) -> dict[str, Any]:
        c = self.config
        return {
            "phase": "finetune" if self.finished else "admm",
            "block": list(c.block),
            "view": c.view,
            "prune_ratio": c.prune_ratio,
            "unify_ratio": c.unify_ratio,
            "unified": c.unified,
            "rho": self.rho,
            "update_every": self.every,
            "finish_at": self.finish,
            "finish": dict(self.finish_info),
            **self.structure(),
            "residual_history": [dict(h) for h in self.history],
        }

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        def copy(d: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if d is None else {n: t.clone() for n, t in d.items()}

        return {
            "rho": self.rho,
            "Z": copy(self.Z),
            "U": copy(self.U),
            "labels": copy(self.labels),
            "history": [dict(h) for h in self.history],
            "finished": self.finished,
            "anchor": copy(self.anchor),
            "finish_info": dict(self.finish_info),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def to(d: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            if d is None:
                return None
            return {n: t.clone().to(self.params[n].device) for n, t in d.items()}

        self.rho = float(state["rho"])
        self.Z, self.U = to(state["Z"]), to(state["U"])
        self.labels = to(state["labels"]) or {}
        self.history = [dict(h) for h in state["history"]]
        self.finished = bool(state["finished"])
        self.anchor = to(state["anchor"]) or {}
        self.finish_info = dict(state["finish_info"])


@hookimpl
def register_modifiers(register: Callable[[type], None]) -> None:
    register(ADMM)
