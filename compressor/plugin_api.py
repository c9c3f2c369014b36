"""The plugin API: the one module a compressor plugin imports from.

Everything a plugin may use is here, grouped by role in ``__all__``: the base classes and
configs of each kind of plugin, what a run hands it, and the toolkit the built-ins share (top-k
and N:M masks, channel groups and removal, gradual pruning, latency; ``compressor.kit``). The
built-in plugins in ``compressor_plugins`` import only this module (a test checks it), so a
third-party package can do everything they do::

    from compressor.plugin_api import Operator, OperatorConfig, hookimpl

Everything else under ``compressor`` is internal. CHANGELOG.md lists every change to this
module's names.
"""

from __future__ import annotations

from compressor.contract.config import (
    OperatorConfig,
    OperatorSpec,
    RegistryRef,
    ScheduleSpec,
    Sparsity,
    TypeConfig,
)
from compressor.contract.context import CompressionContext, EvaluationContext, MaskStore, Metric
from compressor.contract.data import (
    Data,
    DataInfo,
    DatasetBuilder,
    DatasetConfig,
    DataSplits,
    ModelBuilder,
)
from compressor.contract.errors import CompressorError, ConfigError, InputError
from compressor.contract.evaluation import Column, Curve, CurvePoint, Evaluation, Evaluator
from compressor.contract.exporter import Exporter
from compressor.contract.functional import dataset, model
from compressor.contract.hookspecs import hookimpl
from compressor.contract.host import Host
from compressor.contract.launcher import Events, Launcher, LauncherConfig, Outcome
from compressor.contract.logger import Logger, Phase, RunInfo, Status
from compressor.contract.modifier import Modifier
from compressor.contract.operator import Operator
from compressor.contract.optimizer import (
    OptimizerConfig,
    OptimizerFactory,
    OptimizerWrapper,
)
from compressor.contract.schedule import Schedule
from compressor.contract.selection import SelectionConfig, Target
from compressor.contract.steps import StepClock, StepSpec, epochs_of, same_unit_order
from compressor.contract.task import Task, call_model, logits_of
from compressor.kit.allocator import release_freed_memory, reuse_freed_memory
from compressor.kit.bits import pack_bits, unpack_bits
from compressor.kit.bn import batchnorm_layers, freeze_bn_stats, recalibrate_bn
from compressor.kit.channel_removal import (
    PRUNED_FORMAT,
    ExportError,
    export_pruned,
    masked_copy,
    serialized_bytes,
)
from compressor.kit.channels import (
    ChannelGroup,
    channel_groups,
    channel_values,
    example_input,
    output_layers,
    slot_mask,
)
from compressor.kit.defaults import default_operator
from compressor.kit.extras import require_package
from compressor.kit.files import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    staged,
)
from compressor.kit.gradual import GradualModifier, apply_masks, apply_projection
from compressor.kit.grids import ct_dequantize, ct_quantize, ct_range, ct_round, ct_scale
from compressor.kit.latency import compare_latency, interleaved_times
from compressor.kit.nm import (
    NMSkippedWarning,
    from_group_layout,
    group_view,
    groupable,
    input_dim,
    nm_mask,
    nm_ramp_mask,
    nm_violations,
    to_group_layout,
)
from compressor.kit.selection import (
    matches,
    out_in,
    select,
    select_targets,
    sparsity_stats,
)
from compressor.kit.text import stdlib_text
from compressor.kit.threads import torch_threads
from compressor.kit.topk import keep_count, kth_smallest, topk_mask, topk_masks
from compressor.kit.transformer import LayoutError, UnitGroup, transformer_units
from compressor.kit.two_pass import TwoPassConfig, TwoPassWrapper
from compressor.kit.unit_removal import (
    max_diff,
    module_attributes,
    prune_transformer,
    token_probe,
    unit_groups,
)

__all__ = [  # noqa: RUF022 — grouped by role, not sorted
    # Registering: mark hook implementations
    "hookimpl",
    # Configs: what a recipe section validates against
    "TypeConfig",
    "OperatorConfig",
    "OperatorSpec",
    "ScheduleSpec",
    "RegistryRef",
    "SelectionConfig",
    "Sparsity",
    "StepSpec",
    # Base classes, one per kind of plugin
    "Operator",
    "Schedule",
    "Modifier",
    "GradualModifier",
    "OptimizerConfig",
    "OptimizerFactory",
    "OptimizerWrapper",
    "TwoPassConfig",
    "TwoPassWrapper",
    "ModelBuilder",
    "DatasetBuilder",
    "DatasetConfig",
    "model",
    "dataset",
    "Task",
    "Evaluator",
    "Exporter",
    "Launcher",
    "LauncherConfig",
    "Logger",
    # What a run hands a plugin
    "CompressionContext",
    "EvaluationContext",
    "MaskStore",
    "Metric",
    "Target",
    "StepClock",
    "Data",
    "DataInfo",
    "DataSplits",
    "RunInfo",
    "Phase",
    "Status",
    "Events",
    "Outcome",
    # What an evaluator returns
    "Evaluation",
    "Column",
    "Curve",
    "CurvePoint",
    # Errors
    "CompressorError",
    "ConfigError",
    "InputError",
    # Mask toolkit: top-k, N:M, channels, transformer units, gradual pruning, latency
    "keep_count",
    "kth_smallest",
    "topk_mask",
    "topk_masks",
    "default_operator",
    "apply_masks",
    "apply_projection",
    "NMSkippedWarning",
    "to_group_layout",
    "from_group_layout",
    "group_view",
    "groupable",
    "input_dim",
    "nm_mask",
    "nm_ramp_mask",
    "nm_violations",
    "ChannelGroup",
    "channel_groups",
    "channel_values",
    "slot_mask",
    "example_input",
    "output_layers",
    "export_pruned",
    "masked_copy",
    "ExportError",
    "PRUNED_FORMAT",
    "serialized_bytes",
    "compare_latency",
    "interleaved_times",
    "transformer_units",
    "UnitGroup",
    "LayoutError",
    "unit_groups",
    "prune_transformer",
    "module_attributes",
    "token_probe",
    "max_diff",
    # Storage: bitmaps, compressed-tensors' integer grid
    "pack_bits",
    "unpack_bits",
    "ct_range",
    "ct_scale",
    "ct_quantize",
    "ct_dequantize",
    "ct_round",
    # Helpers: selecting weights, BatchNorm, files, threads, memory, model outputs, steps
    "select",
    "select_targets",
    "matches",
    "out_in",
    "sparsity_stats",
    "batchnorm_layers",
    "freeze_bn_stats",
    "recalibrate_bn",
    "atomic_save",
    "atomic_write_json",
    "atomic_write_text",
    "load_checkpoint",
    "staged",
    "require_package",
    "stdlib_text",
    "torch_threads",
    "reuse_freed_memory",
    "release_freed_memory",
    "call_model",
    "logits_of",
    "epochs_of",
    "same_unit_order",
    # The host: registered types and finished runs, outside a recipe (CLI commands get it)
    "Host",
]
