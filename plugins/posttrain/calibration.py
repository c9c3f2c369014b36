"""Calibration for data-aware one-shot operators (METHODS.md §10): statistics of layer inputs.

A data-aware operator (Wanda, SparseGPT, GPTQ) needs, for every layer it compresses, statistics
of that layer's inputs ``X`` (columns = tokens/positions × samples): per-feature squared norms
for Wanda, ``H = 2·X·Xᵀ`` for the OBS solvers. :class:`DataAwareOperator` gets them like this:

* **Data.** A fixed, seeded set of ``calibration.samples`` training samples, drawn once through
  the context the operator was bound with (``context.calibration_batches(samples, seed, 1,
  samples)``: one batch holding the whole subset, evaluation transforms, on the model's device)
  and split into forward passes of ``calibration.batch_size``. The inputs (not activations) are
  kept on the operator and reused for every layer and every later call.
* **Order and passes** (:mod:`.pipeline`). A probe pass (two samples) records execution
  order, which layers read the same input (one shared statistic), and the model's repeated
  blocks; then the block-by-block pipeline calibrates and compresses group by group
  (``calibration.sequential: exact``, the layer-by-layer result) or block by block
  (``block``), each group's forward pre-hook turning its input into GEMM columns added to its
  statistics batch by batch. The weights being compressed are written into the bound model
  first, and each compressed group's afterwards, so later layers see the outputs of the
  already compressed ones (SparseGPT's sequential mode). When all are done, every weight is
  restored exactly: operators return tensors, they never change the model.
* **Modes.** Calibration runs under ``no_grad`` with the model in eval mode, except that with
  ``calibration.bn: batch`` (the default) BatchNorm layers normalise with each calibration
  batch's own statistics, running statistics untouched (``freeze_bn_stats``). After one-shot
  compression every evaluation re-calibrates BN, so batch statistics of the partly compressed
  model are closer to what the final model computes than the dense model's running ones.
  ``bn: running`` uses the running statistics (plain eval mode). Every module's training flag
  is restored afterwards.

Without data: an operator bound to a context whose ``calibration_batches`` gives None (a
``Session`` in a user's own loop that was given no ``calibration=``) raises a located
ConfigError at bind time, before any training. One bound without a context (tests, scripts)
needs :meth:`DataAwareOperator.use_calibration` with explicit inputs, else compressing raises a
clean CompressorError. There is no silent fallback to a data-free criterion.

Layouts. A ``Linear`` (and Hugging Face ``Conv1D``, whose ``[in, out]`` weight is read through
:meth:`Operator.out_in`) is its own GEMM ``[out, in]``. A ``ConvNd`` weight ``[out, in, *k]``
is viewed as ``[out, *k, in]`` flattened, i.e. ``[out, k·in]`` with the input channel fastest,
and its inputs are unfolded in the same order, so ``W2d @ X`` is the convolution and groups of
M consecutive columns are M inputs at one kernel position, as for the ``nm`` operator.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    CompressionContext,
    CompressorError,
    ConfigError,
    NMSkippedWarning,
    Operator,
    Target,
    TypeConfig,
    batchnorm_layers,
    call_model,
    freeze_bn_stats,
    from_group_layout,
    keep_count,
    to_group_layout,
    topk_masks,
)
from compressor_plugins.posttrain.owl import outlier_ratio, owl_levels
from compressor_plugins.posttrain.pipeline import (
    Group,
    Offload,
    Plan,
    Sequential,
    Sink,
    find_blocks,
    no_kv_cache,
    plan,
    run_pipeline,
)

__all__ = [
    "CalibrationConfig",
    "DataAwareOperator",
    "LayerStatistics",
    "calibration_mode",
    "from_gemm",
    "gemm_view",
    "layer_columns",
    "split_inputs",
]

Statistic = Literal["norms", "hessian"]


class CalibrationConfig(TypeConfig):
    """``calibration:`` of a data-aware operator: which samples, and how they are run."""

    samples: int = Field(128, gt=0, description="calibration samples from the training data")
    batch_size: int = Field(32, gt=0, description="samples per calibration forward pass")
    seed: int = Field(0, description="chooses the fixed subset of training samples")
    bn: Literal["batch", "running"] = Field(
        "batch",
        description="BatchNorm during calibration: each batch's statistics (running ones "
        "untouched) or the running statistics",
    )
    sequential: Sequential = Field(
        "exact",
        description="exact: each group of a block calibrated after the earlier ones are "
        "compressed (the layer-by-layer result); block: one calibration pass per block",
    )
    sequential_targets: list[str] | None = Field(
        None,
        description="the repeated blocks: class names or module-name globs (default: the "
        "model's _no_split_modules)",
    )
    offload: Offload = Field(
        "none", description="cpu: cached activations on the CPU, one block at a time on CUDA"
    )


# -- layouts ---------------------------------------------------------------------------------


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` unchanged; ``[out, in, *k]`` as ``[out, k·in]`` (input channel fastest)."""
    if weight.dim() == 2:
        return weight
    return to_group_layout(weight).reshape(weight.shape[0], -1)


def from_gemm(matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gemm_view` for a tensor shaped like ``like`` (``[out, in, *k]``)."""
    if like.dim() == 2:
        return matrix.contiguous()
    return from_group_layout(matrix.reshape(to_group_layout(like).shape)).contiguous()


def _conv_padding(module: nn.Conv1d | nn.Conv2d, spatial: int) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial dimension, as the layer pads its input."""
    kernel, dilation = tuple(module.kernel_size), tuple(module.dilation)
    padding = module.padding
    if isinstance(padding, str):  # 'valid' / 'same', as torch's _ConvNd computes them
        if padding == "valid":
            return [(0, 0)] * spatial
        pads = []
        for d, k in zip(dilation, kernel, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads
    return [(int(p), int(p)) for p in padding]


def conv_columns(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The convolution's input as GEMM rows ``[batch·positions, k·in]`` (see module doc)."""
    spatial = 1 if isinstance(module, nn.Conv1d) else 2
    if x.dim() == spatial + 1:  # unbatched input
        x = x.unsqueeze(0)
    kernel, stride, dilation = (
        tuple(module.kernel_size),
        tuple(module.stride),
        tuple(module.dilation),
    )
    pads = _conv_padding(module, spatial)
    if spatial == 1:  # as a 2-D convolution of height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        pads = [(0, 0), *pads]
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last dimension first
    if any(flat):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, flat, mode=mode)
    cols = F.unfold(x, kernel_size=kernel, dilation=dilation, stride=stride)
    batch, _, positions = cols.shape
    channels, taps = module.in_channels, math.prod(kernel)
    return (
        cols.view(batch, channels, taps, positions).permute(0, 3, 2, 1).reshape(-1, taps * channels)
    )


def layer_columns(target: Target, x: torch.Tensor) -> torch.Tensor:
    """A target layer's input ``x`` as rows of ``Xᵀ``: ``[columns, GEMM inputs]``."""
    module = target.module
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return conv_columns(module, x)
    return x.reshape(-1, x.shape[-1])  # Linear and HF Conv1D: features last


def check_layer(target: Target, kind: str) -> None:
    """ConfigError for layers calibration cannot read (embeddings, 3-D or grouped convs)."""
    module = target.module
    if isinstance(module, nn.Linear) or target.transposed:
        return
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups != 1:
            raise ConfigError(
                f"{kind} does not support grouped convolutions ({target.name} has groups="
                f"{module.groups}); exclude it",
                ("exclude",),
            )
        return
    raise ConfigError(
        f"{kind} compresses Linear and Conv1d/Conv2d layers from their inputs; "
        f"{target.name} is a {type(module).__name__}: exclude it (or drop it from 'modules')",
        ("modules",),
    )


# -- statistics ------------------------------------------------------------------------------


GRAM_PARTS = 4  # column blocks of the upper triangle: 10 products of 16, one third less work


def gram(x: torch.Tensor) -> torch.Tensor:
    """``Xᵀ·X`` for ``x`` ``[tokens, n]``, from its upper block triangle with the lower mirrored
    (exactly symmetric). With 4 column blocks it does 10 of the 16 block products: on one CPU
    thread 33 ms instead of 50 for the bench model's 4096 × 768 inputs, equal to the full
    product there. Small ``n`` takes the single product."""
    n = x.shape[1]
    if n < 64 * GRAM_PARTS:
        return x.t() @ x
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    edges = [round(i * n / GRAM_PARTS) for i in range(GRAM_PARTS + 1)]
    for start, stop in itertools.pairwise(edges):
        rows = x[:, start:stop].t() @ x[:, start:]
        out[start:stop, start:] = rows
        out[stop:, start:stop] = rows[:, stop - start :].t()
    return out


class LayerStatistics:
    """One layer's input statistics, accumulated batch by batch in float64.

    ``norms``: ``Σ_t X_jt²`` per GEMM input ``j`` (Wanda's ``||X_j||_2²``); ``hessian``:
    ``H = 2·Σ_t x_t x_tᵀ`` (``2·X·Xᵀ``, no averaging: the dampening is relative to its mean
    diagonal, so the solution does not depend on the scale). ``columns``: how many ``x_t``.
    """

    def __init__(self, kind: Statistic, compute: torch.dtype) -> None:
        self.kind = kind
        self.compute = compute
        self.value: torch.Tensor | None = None
        self.columns = 0

    def add(self, rows: torch.Tensor) -> None:
        x = rows.detach().to(self.compute)
        term = x.square().sum(0) if self.kind == "norms" else 2.0 * gram(x)
        term = term.double()
        self.value = term if self.value is None else self.value.add_(term)
        self.columns += rows.shape[0]


# -- inputs and modes --------------------------------------------------------------------------


def _batch_size(inputs: Any) -> int | None:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else None
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    if isinstance(values, Iterable) and not isinstance(inputs, str | bytes):
        for value in values:
            size = _batch_size(value)
            if size is not None:
                return size
    return None


def _slice(inputs: Any, start: int, stop: int, size: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[start:stop] if inputs.dim() and inputs.shape[0] == size else inputs
    if isinstance(inputs, Mapping):
        return {k: _slice(v, start, stop, size) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_slice(v, start, stop, size) for v in inputs)
    return inputs


def split_inputs(inputs: Any, batch_size: int) -> list[Any]:
    """A batch of model inputs (a tensor, or tensors in a mapping/tuple) in pieces of
    ``batch_size`` samples along dimension 0."""
    size = _batch_size(inputs)
    if size is None or size <= batch_size:
        return [inputs]
    return [_slice(inputs, s, min(s + batch_size, size), size) for s in range(0, size, batch_size)]


@contextlib.contextmanager
def calibration_mode(model: nn.Module, bn: str) -> Iterator[None]:
    """``no_grad``, eval mode, BN on batch statistics (``bn='batch'``) with running statistics
    frozen; every module's training flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    if bn == "batch":
        for layer in batchnorm_layers(model):
            layer.train()
    try:
        with torch.no_grad(), freeze_bn_stats(model):
            yield
    finally:
        for module, flag in flags:
            module.training = flag


def has_data(context: CompressionContext) -> bool:
    """Whether ``context`` can give calibration batches (nothing is read to find out)."""
    source = getattr(context, "calibration_batches", None)
    if source is None:
        return False
    batches = source(1, 0, 1, 1)
    if batches is None:
        return False
    close = getattr(batches, "close", None)
    if callable(close):
        close()
    return True


# -- the operator base -------------------------------------------------------------------------


class DataAwareOperator(Operator):
    """An operator whose per-layer result depends on that layer's calibration inputs.

    Subclasses set :attr:`STATISTIC`, have a ``calibration: CalibrationConfig`` config field
    and implement :meth:`compress_layer`; :meth:`compress` runs the sequential calibration and
    returns each target's compressed value and keep-mask.
    """

    STATISTIC: ClassVar[Statistic] = "norms"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model: nn.Module | None = None
        self.context: CompressionContext | None = None
        self.skipped: list[str] = []
        self._explicit: list[Any] | None = None
        self._forward: Callable[[nn.Module, Any], Any] | None = None
        self._inputs: list[Any] | None = None
        self._plan: Plan | None = None
        self.progress: Callable[[str, float], None] | None = None  # (label, seconds) per block

    # -- binding and data ----------------------------------------------------------------------

    def bind(
        self, model: nn.Module, targets: list[Target], context: CompressionContext | None = None
    ) -> None:
        """Check the layers, then require data: a context without any is a ConfigError. (A
        language model's embeddings and output head are not among the targets unless named:
        ``select_targets`` leaves them dense by default.)"""
        for target in targets:
            check_layer(target, str(self.config.kind))
        super().bind(model, targets, context)
        self.model, self.context = model, context
        self._plan = None
        if context is not None and self._explicit is None and not has_data(context):
            raise ConfigError(
                f"{self.config.kind} compresses from calibration data, and this context has "
                "none: in your own loop pass Session(..., calibration=fn) (fn(samples, seed, "
                "batches, batch_size) yields batches of model inputs), or call "
                "use_calibration(inputs) on an operator built without a context",
                ("calibration",),
            )

    def use_calibration(
        self, inputs: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None = None
    ) -> None:
        """Calibrate on these batches of model inputs instead of the context's data
        (``forward(model, inputs)``; default: the context's, else ``call_model``)."""
        self._explicit = list(inputs)
        self._forward = forward
        self._inputs = None

    def calibration_inputs(self) -> list[Any]:
        """The calibration batches (drawn once, then reused)."""
        if self._inputs is not None:
            return self._inputs
        c: CalibrationConfig = self.config.calibration
        if self._explicit is not None:
            batches: Iterable[Any] | None = self._explicit
        else:
            source = getattr(self.context, "calibration_batches", None)
            batches = None if source is None else source(c.samples, c.seed, 1, c.samples)
        if batches is None:
            raise CompressorError(
                f"{self.config.kind} needs calibration data: bind it with a context that has "
                "data (a run of the built-in loop, or Session(..., calibration=fn)) or call "
                "use_calibration(inputs)"
            )
        inputs = [piece for batch in batches for piece in split_inputs(batch, c.batch_size)]
        if not inputs:
            raise CompressorError(f"{self.config.kind}: the calibration data is empty")
        self._inputs = inputs
        return inputs

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        if self._forward is not None:
            return self._forward(model, inputs)
        context_forward = getattr(self.context, "forward", None)
        if context_forward is not None:
            return context_forward(model, inputs)
        return call_model(model, inputs)

    # -- what subclasses implement ---------------------------------------------------------

    def compress_layer(
        self, target: Target, weight: torch.Tensor, stats: LayerStatistics, sparsity: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The compressed GEMM-view ``weight`` ``[out, cols]`` and its keep-mask."""
        raise NotImplementedError

    def layer_skipped(self, target: Target) -> bool:
        """True for layers the configured pattern cannot apply to (they stay unchanged)."""
        return target.name in self.skipped

    def warn_skipped(self, targets: Sequence[Target], group: int, pattern: str) -> None:
        """Targets whose GEMM inputs do not form whole groups of ``group``, by the config's
        ``partial_groups``: ``skip`` (record them, warn once; they stay dense), ``error`` (a
        ConfigError naming them), ``partial`` (GPTQ: a smaller last group; nothing to do)."""
        policy = getattr(self.config, "partial_groups", "skip")
        inputs = {t.name: int(self.out_in(t.name, t.param).shape[1]) for t in targets}
        bad = [t.name for t in targets if inputs[t.name] % group]
        self.skipped = bad if policy == "skip" else []
        if not bad or policy == "partial":
            return
        described = ", ".join(f"{name} (input dim {inputs[name]})" for name in bad)
        if policy == "error":
            raise ConfigError(
                f"{self.config.kind} {pattern} needs input dimensions that are multiples of "
                f"{group}; not: {described} (exclude them, or partial_groups: skip)",
                ("partial_groups",),
            )
        warnings.warn(
            f"{self.config.kind} {pattern} skips {len(bad)} tensor(s) whose input "
            f"dimension is not a multiple of {group} (they stay dense): {described}",
            NMSkippedWarning,
            stacklevel=3,
        )

    def layer_sparsities(
        self, weights: dict[str, torch.Tensor], sparsity: float
    ) -> dict[str, float]:
        """Each layer's target: ``sparsity`` itself (``scope: layer``, uniform, as the papers
        do), or with ``scope: global`` the fraction of the layer that one global magnitude
        threshold over all of ``weights`` (as given, before any is compressed) would prune —
        magnitude's allocation, so the total pruned count is exactly magnitude's."""
        if getattr(self.config, "scope", "layer") != "global":
            return {name: sparsity for name in weights}
        scores = [w.detach().abs().flatten() for w in weights.values()]
        total = sum(x.numel() for x in scores)
        kept = topk_masks(scores, keep_count(total, sparsity))
        return {
            name: 1.0 - int(mask.sum()) / mask.numel()
            for name, mask in zip(weights, kept, strict=True)
        }

    def owl_sparsities(
        self, model: nn.Module, found: Plan, groups: list[Group], inputs: list[Any], sparsity: float
    ) -> dict[str, float]:
        """``scope: owl`` (:mod:`.owl`): one dense pass gives each unit's outlier ratio."""
        owl = self.config.owl
        scores: dict[Any, list[torch.Tensor]] = {}
        stats: dict[int, LayerStatistics] = {}

        def open_group(group: Group) -> Sink:
            first = group.members[0]
            shared = LayerStatistics("norms", self.compute_dtype(first.param))
            stats[id(group)] = shared
            return lambda x: shared.add(layer_columns(first, x))

        def close_group(group: Group) -> None:
            shared = stats.pop(id(group))
            assert shared.value is not None
            unit = group.block if group.block is not None else ("layer", id(group))
            for target in group.members:
                weight = gemm_view(self.out_in(target.name, target.param.detach()))
                norms = shared.value.sqrt().to(weight.dtype)
                scores.setdefault(unit, []).append(weight.abs() * norms[None, :])

        run_pipeline(
            model, found, groups, inputs, self.forward, open_group, close_group,
            sequential="block", offload=self.config.calibration.offload,
        )  # fmt: skip
        ratios = {unit: outlier_ratio(values, owl.M) for unit, values in scores.items()}
        per_unit = owl_levels(ratios, sparsity, owl.lam)
        return {
            t.name: per_unit[g.block if g.block is not None else ("layer", id(g))]
            for g in groups
            for t in g.members
        }

    # -- the sequential driver ---------------------------------------------------------------

    def compute_dtype(self, weight: torch.Tensor) -> torch.dtype:
        return torch.float64 if weight.dtype == torch.float64 else torch.float32

    def probe(self, model: nn.Module, inputs: list[Any]) -> Plan:
        """The probe pass (two samples): execution order, shared inputs, blocks."""
        if self._plan is not None:
            return self._plan
        c: CalibrationConfig = self.config.calibration
        blocks = find_blocks(model, c.sequential_targets)
        probe = split_inputs(inputs[0], 2)[0]  # one sample would break BN on batch statistics
        found = plan(model, self.targets, blocks, lambda: self.forward(model, probe))
        reached = {id(t.module) for t in found.order}
        missing = [t.name for t in self.targets if id(t.module) not in reached]
        if missing:
            raise CompressorError(
                f"{self.config.kind}: the model's forward never calls the layer(s) of "
                f"{', '.join(missing)}, so they have no calibration inputs; exclude them"
            )
        self._plan = found
        return found

    def compress(
        self, weights: dict[str, torch.Tensor], sparsity: float
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every tensor of ``weights`` (bound targets), compressed in model order on the bound
        model, each from the inputs produced by the already compressed layers before it.
        Returns ``{name: (value, keep-mask)}`` in the stored layout; the model is unchanged."""
        model = self.model
        if model is None:
            raise CompressorError(f"{self.config.kind}: bind the operator to a model first")
        bound = {t.name for t in self.targets}
        unknown = [name for name in weights if name not in bound]
        if unknown:
            raise CompressorError(
                f"{self.config.kind} compresses the layers it is bound to; not bound: "
                f"{', '.join(unknown)}"
            )
        inputs = self.calibration_inputs()
        levels: dict[str, float] = {}
        results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        c: CalibrationConfig = self.config.calibration
        stats: dict[int, LayerStatistics] = {}

        def open_group(group: Group) -> Sink:
            first = group.members[0]
            shared = LayerStatistics(self.STATISTIC, self.compute_dtype(first.param))
            stats[id(group)] = shared
            return lambda x: shared.add(layer_columns(first, x))

        def close_group(group: Group) -> None:
            shared = stats.pop(id(group))
            for target in group.members:
                stored = target.param.detach()
                oriented = self.out_in(target.name, stored)
                dtype = self.compute_dtype(stored)
                value2d, mask2d = self.compress_layer(
                    target, gemm_view(oriented).to(dtype, copy=True), shared, levels[target.name]
                )
                value = self.out_in(target.name, from_gemm(value2d.to(stored.dtype), oriented))
                mask = self.out_in(target.name, from_gemm(mask2d, oriented))
                home = weights[target.name].device
                results[target.name] = (value.contiguous().to(home), mask.contiguous().to(home))
                target.param.copy_(value)

        with calibration_mode(model, c.bn), no_kv_cache(model):
            found = self.probe(model, inputs)
            order = [t for t in found.order if t.name in weights]
            saved = {t.name: t.param.detach().clone() for t in order}
            try:
                for target in order:
                    target.param.copy_(weights[target.name])
                active = []
                for target in order:
                    if self.layer_skipped(target):
                        stored = target.param.detach()
                        results[target.name] = (
                            stored.clone(),
                            torch.ones_like(stored, dtype=torch.bool),
                        )
                    else:
                        active.append(target)
                groups = found.groups(active)
                if getattr(self.config, "scope", "layer") == "owl":
                    levels.update(self.owl_sparsities(model, found, groups, inputs, sparsity))
                else:
                    levels.update(self.layer_sparsities(weights, sparsity))
                run_pipeline(
                    model,
                    found,
                    groups,
                    inputs,
                    self.forward,
                    open_group,
                    close_group,
                    sequential=c.sequential,
                    offload=c.offload,
                    progress=self.progress,
                )
            finally:
                for target in order:
                    target.param.copy_(saved[target.name])
        return {name: results[name] for name in weights if name in results}
