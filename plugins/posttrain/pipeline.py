"""Block-by-block calibration (METHODS.md §10, "Block-by-block pipeline"): linear in depth.

**Blocks** are the model's repeated modules: the calibration config's ``sequential_targets``
(class names, or shell globs over module names), else Hugging Face's ``_no_split_modules``;
the outermost matches only. A block takes part only if the probe pass calls it exactly once.

**The probe** (one forward on two samples) records, for every target module, its calls and
the identity of the tensor each call reads, and for every block its inputs and output. Targets
become **groups**: modules that read the same tensor in every call (q/k/v; gate/up) with the
same layout share one statistic. Block ``i`` is *chained* to block ``i-1`` when it reads the
previous output and the very same other arguments (attention mask, position embeddings).

**The pass.** Segments in execution order: a block (all its groups) or a group outside every
block. A block runs on its inputs cached once per batch (positional and keyword): captured by
one model forward stopped at the block, or — when chained — the outputs of the previous
block's compressed pass. ``sequential: exact``: each group in execution order is calibrated
by running the block (stopped right after the group's hook when it is called once), then
compressed before the next group: the layer-by-layer result, bit for bit. ``sequential:
block``: one pass calibrates every group of the block (on its dense weights), all are
compressed, then one compressed pass propagates. A group outside the blocks (a CNN's layers,
an LM head) is calibrated with model forwards stopped after its hook, as before.

**Offload.** ``offload: cpu`` keeps the cached activations on the CPU; when CUDA is available
each block is moved there while it is processed and back afterwards.

**Memory.** A pass frees and allocates a batch's activations over and over; under glibc they
stay mapped for reuse (``compressor.kit.allocator``: its thresholds are set when the pipeline
starts and stay set), which saves the page faults that were a sixth of a language model's
compression time.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from compressor.plugin_api import (
    CompressorError,
    Target,
    release_freed_memory,
    reuse_freed_memory,
)

__all__ = [
    "Group",
    "Plan",
    "Sink",
    "find_blocks",
    "first_input",
    "no_kv_cache",
    "plan",
    "run_pipeline",
]

Sink = Callable[[torch.Tensor], None]
Sequential = Literal["exact", "block"]
Offload = Literal["none", "cpu"]
Call = tuple[tuple[Any, ...], dict[str, Any]]


class _Stop(Exception):
    """Raised by a hook to end a forward once what it needs has been read."""


def first_input(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor:
    """The first tensor a module was called with (its input)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise CompressorError("calibration: a target layer was called without a tensor input")


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """``config.use_cache`` off (a Hugging Face cache would grow with every block re-run)."""
    config = getattr(model, "config", None)
    flag = getattr(config, "use_cache", None)
    if flag is None:
        yield
        return
    config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        config.use_cache = flag  # type: ignore[union-attr]


def find_blocks(model: nn.Module, sequential_targets: Sequence[str] | None) -> list[nn.Module]:
    """The outermost modules named by ``sequential_targets`` (else ``_no_split_modules``)."""
    names = list(sequential_targets or getattr(model, "_no_split_modules", None) or [])
    if not names:
        return []
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside or module is model:
            continue
        kind = type(module).__name__
        if any(kind == n or fnmatch.fnmatchcase(name, n) for n in names):
            blocks.append(module)
            inside.update(id(m) for m in module.modules())
    return blocks


@dataclass
class Group:
    """Targets that read the same input tensor, in execution order; ``calls`` per forward."""

    members: list[Target]
    calls: int
    block: int | None
    rank: int


@dataclass
class Plan:
    """What the probe pass learnt: execution order, groups, blocks and which are chained."""

    order: list[Target]
    calls: dict[int, int]
    keys: dict[int, tuple[Any, ...]]
    blocks: list[nn.Module]
    block_of: dict[int, int]
    chained: list[bool] = field(default_factory=list)

    def groups(self, targets: Sequence[Target]) -> list[Group]:
        """``targets`` (a subset of the plan's) grouped by shared input, in execution order."""
        wanted = {id(t.module) for t in targets}
        groups: dict[tuple[Any, ...], Group] = {}
        for rank, target in enumerate(self.order):
            key_module = id(target.module)
            if key_module not in wanted:
                continue
            key = (self.block_of.get(key_module), self.keys[key_module], _layout(target))
            if key not in groups:
                groups[key] = Group([], self.calls[key_module], key[0], rank)
            groups[key].members.append(target)
        return sorted(groups.values(), key=lambda g: g.rank)


def _layout(target: Target) -> tuple[Any, ...]:
    """How a module turns its input into GEMM columns: members of a group must agree."""
    m = target.module
    kind = (type(m).__name__, target.param.dtype)
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        return (*kind, m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode)
    return kind


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return False


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple | list) else output


def plan(
    model: nn.Module,
    targets: Sequence[Target],
    blocks: list[nn.Module],
    run: Callable[[], Any],
) -> Plan:
    """Run ``run()`` (one small forward) with probes on the targets and blocks."""
    calls: dict[int, int] = {}
    seen: list[int] = []
    reads: dict[int, list[int]] = {}
    keep: list[Any] = []  # everything whose id is recorded stays alive during the probe
    block_calls: dict[int, list[tuple[Call, Any]]] = {i: [] for i in range(len(blocks))}
    modules = {id(t.module): t.module for t in targets}

    def probe(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        key = id(module)
        if key not in calls:
            seen.append(key)
            calls[key] = 0
        calls[key] += 1
        x = first_input(args, kwargs)
        keep.append(x)
        reads.setdefault(key, []).append(id(x))

    def block_probe(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            keep.append(output)
            block_calls[index].append(((tuple(args), dict(kwargs)), output))

        return hook

    handles = [m.register_forward_pre_hook(probe, with_kwargs=True) for m in modules.values()]
    handles += [
        b.register_forward_hook(block_probe(i), with_kwargs=True) for i, b in enumerate(blocks)
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    rank = {key: i for i, key in enumerate(seen)}
    order = sorted((t for t in targets if id(t.module) in calls), key=lambda t: rank[id(t.module)])
    once = [len(block_calls[i]) == 1 for i in range(len(blocks))]
    block_of = {
        id(m): i for i, b in enumerate(blocks) if once[i] for m in b.modules() if id(m) in calls
    }
    chained = [False] * len(blocks)
    for i in range(1, len(blocks)):
        if not (once[i] and once[i - 1]):
            continue
        ((args, kwargs), _), ((prev_args, prev_kwargs), prev_out) = (
            block_calls[i][0],
            block_calls[i - 1][0],
        )
        chained[i] = (
            bool(args)
            and args[0] is _hidden(prev_out)
            and _same(args[1:], prev_args[1:])
            and _same(kwargs, prev_kwargs)
        )
    keys = {key: tuple(ids) for key, ids in reads.items()}
    return Plan(order, calls, keys, blocks, block_of, chained)


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _device_of(module: nn.Module) -> torch.device | None:
    for param in module.parameters():
        return param.device
    return None


@dataclass
class _Runner:
    """Runs the segments (see module doc) with the operator's open/close callbacks."""

    model: nn.Module
    plan: Plan
    inputs: list[Any]
    forward: Callable[[nn.Module, Any], Any]
    open_group: Callable[[Group], Sink]
    close_group: Callable[[Group], None]
    sequential: Sequential
    offload: Offload
    progress: Callable[[str, float], None] | None = None
    block_forwards: int = 0

    @property
    def store(self) -> torch.device | None:
        """Where cached activations live (None: wherever the model put them)."""
        return torch.device("cpu") if self.offload == "cpu" else None

    @property
    def compute(self) -> torch.device | None:
        """Where a block runs while processed (None: where it is)."""
        if self.offload == "cpu" and torch.cuda.is_available():
            return torch.device("cuda")
        return None

    def _hook(self, group: Group, sink: Sink, stop: bool) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            sink(first_input(args, kwargs))
            if stop:
                raise _Stop

        return group.members[0].module.register_forward_pre_hook(hook, with_kwargs=True)

    def full(self, group: Group) -> None:
        """A group outside the blocks: model forwards stopped after its hook."""
        sink = self.open_group(group)
        handle = self._hook(group, sink, group.calls == 1)
        try:
            for batch in self.inputs:
                with contextlib.suppress(_Stop):
                    self.forward(self.model, batch)
        finally:
            handle.remove()
        self.close_group(group)

    def capture(self, block: nn.Module) -> list[Call]:
        """The block's inputs for every batch, from model forwards stopped at it."""
        cache: list[Call] = []

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            cache.append((_to(tuple(args), self.store), _to(dict(kwargs), self.store)))
            raise _Stop

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for batch in self.inputs:
                with contextlib.suppress(_Stop):
                    self.forward(self.model, batch)
        finally:
            handle.remove()
        return cache

    def run_block(self, block: nn.Module, call: Call) -> Any:
        args, kwargs = call
        self.block_forwards += 1
        return block(*_to(args, self.compute), **_to(kwargs, self.compute))

    def block(self, block: nn.Module, groups: list[Group], cache: list[Call], out: bool) -> Any:
        """Calibrate and compress the block's groups; with ``out``, replace each cached input by
        the block's compressed output (the next block's input), so that the activations of one
        block boundary are held at a time, not two."""
        if self.sequential == "exact":
            for group in groups:
                self._calibrate(block, [group], cache)
                self.close_group(group)
        else:
            self._calibrate(block, groups, cache)
            for group in groups:
                self.close_group(group)
        if not out:
            return None
        for i, (args, kwargs) in enumerate(cache):  # in place: one boundary's activations held
            hidden = _to(_hidden(self.run_block(block, (args, kwargs))), self.store)
            cache[i] = ((hidden, *args[1:]), kwargs)
        return cache

    def _calibrate(self, block: nn.Module, groups: list[Group], cache: list[Call]) -> None:
        sinks = [self.open_group(g) for g in groups]
        last = groups[-1]
        handles = [
            self._hook(g, s, g is last and g.calls == 1) for g, s in zip(groups, sinks, strict=True)
        ]
        try:
            for call in cache:
                with contextlib.suppress(_Stop):
                    self.run_block(block, call)
        finally:
            for handle in handles:
                handle.remove()

    def run(self, groups: list[Group]) -> None:
        segments: list[tuple[int | None, list[Group]]] = []
        for group in groups:
            if group.block is not None and segments and segments[-1][0] == group.block:
                segments[-1][1].append(group)
            else:
                segments.append((group.block, [group]))
        cache: list[Call] | None = None
        cached_for: int | None = None
        for index, (b, members) in enumerate(segments):
            if b is None:
                (group,) = members
                self.full(group)
                cache = None
                continue
            block = self.plan.blocks[b]
            if cache is None or cached_for != b:
                cache = self.capture(block)
            after = segments[index + 1][0] if index + 1 < len(segments) else None
            chained = after == b + 1 and self.plan.chained[b + 1]
            home = _device_of(block)
            start = time.perf_counter()
            if self.compute is not None:
                block.to(self.compute)
            try:
                cache = self.block(block, members, cache, chained)
            finally:
                if self.compute is not None and home is not None:
                    block.to(home)
            cached_for = b + 1 if chained else None
            if self.progress is not None:
                self.progress(f"block {b + 1}/{len(self.plan.blocks)}", time.perf_counter() - start)


def run_pipeline(
    model: nn.Module,
    plan: Plan,
    groups: list[Group],
    inputs: list[Any],
    forward: Callable[[nn.Module, Any], Any],
    open_group: Callable[[Group], Sink],
    close_group: Callable[[Group], None],
    *,
    sequential: Sequential = "exact",
    offload: Offload = "none",
    progress: Callable[[str, float], None] | None = None,
) -> int:
    """Calibrate and compress ``groups`` (see module doc); returns the block forwards run.
    ``progress(label, seconds)`` is called after each block. Freed activations are kept for
    the next batch rather than faulted in again (:func:`reuse_freed_memory`), and the free heap
    is handed back at the end."""
    runner = _Runner(
        model, plan, inputs, forward, open_group, close_group, sequential, offload, progress
    )
    reuse_freed_memory()
    try:
        runner.run(groups)
    finally:
        release_freed_memory()
    return runner.block_forwards
