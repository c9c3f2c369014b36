"""The plugin API: the one module a compressor plugin imports from.

Everything a plugin may use is here, and nothing here changes without a deprecation period.
The built-in plugins in ``compressor_plugins`` import only this module (a test checks it), so
a third-party package can do everything they do::

    from compressor.plugin_api import Operator, OperatorConfig, hookimpl

Everything else under ``compressor`` is internal and may change between releases.
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
from compressor.contract.errors import CompressorError, ConfigError, Loc, PluginError
from compressor.contract.evaluation import Column, Curve, CurvePoint, Evaluation, Evaluator
from compressor.contract.exporter import Exporter
from compressor.contract.functional import dataset, model
from compressor.contract.hookspecs import hookimpl
from compressor.contract.host import Host
from compressor.contract.launcher import Events, Job, Launcher, LauncherConfig, Outcome
from compressor.contract.logger import PHASES, Logger, Phase, RunInfo, Status
from compressor.contract.modifier import Modifier
from compressor.contract.operator import Operator
from compressor.contract.optim import DelegatingOptimizer
from compressor.contract.optimizer import (
    OptimizerConfig,
    OptimizerFactory,
    OptimizerWrapper,
)
from compressor.contract.schedule import Schedule
from compressor.contract.selection import ModuleKind, SelectionConfig, Target
from compressor.contract.steps import StepClock, StepSpec, epochs_of, same_unit_order
from compressor.contract.task import Task, call_model, logits_of, to_device
from compressor.kit.bn import batchnorm_layers, freeze_bn_stats, recalibrate_bn
from compressor.kit.channel_removal import (
    PRUNED_FORMAT,
    ExportError,
    count_macs_params,
    dead_channels,
    export_pruned,
    serialized_bytes,
)
from compressor.kit.channels import (
    ChannelGroup,
    Slot,
    channel_groups,
    channel_values,
    example_input,
    output_layers,
    require_torch_pruning,
    slot_mask,
)
from compressor.kit.defaults import default_operator
from compressor.kit.files import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
)
from compressor.kit.gradual import GradualModifier, apply_masks, apply_projection
from compressor.kit.latency import compare_latency
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
from compressor.kit.params import params_with_grad
from compressor.kit.selection import (
    matches,
    out_in,
    select,
    select_targets,
    sparsity_stats,
    unwrap_model,
)
from compressor.kit.threads import torch_threads
from compressor.kit.topk import keep_count, kth_smallest, topk_mask, topk_masks
from compressor.kit.two_pass import TwoPassConfig, TwoPassWrapper

__all__ = [
    "PRUNED_FORMAT",
    "ExportError",
    "count_macs_params",
    "dead_channels",
    "export_pruned",
    "serialized_bytes",
    "ChannelGroup",
    "Slot",
    "channel_groups",
    "channel_values",
    "example_input",
    "output_layers",
    "require_torch_pruning",
    "slot_mask",
    "default_operator",
    "GradualModifier",
    "apply_masks",
    "apply_projection",
    "compare_latency",
    "NMSkippedWarning",
    "from_group_layout",
    "group_view",
    "groupable",
    "input_dim",
    "nm_mask",
    "nm_ramp_mask",
    "nm_violations",
    "to_group_layout",
    "keep_count",
    "kth_smallest",
    "topk_mask",
    "topk_masks",
    "Column",
    "CompressionContext",
    "CompressorError",
    "ConfigError",
    "Curve",
    "CurvePoint",
    "Data",
    "DataInfo",
    "DataSplits",
    "DatasetBuilder",
    "DatasetConfig",
    "DelegatingOptimizer",
    "Evaluation",
    "EvaluationContext",
    "Evaluator",
    "Events",
    "Exporter",
    "Host",
    "Job",
    "Launcher",
    "LauncherConfig",
    "Loc",
    "Logger",
    "MaskStore",
    "Metric",
    "ModelBuilder",
    "Modifier",
    "ModuleKind",
    "Operator",
    "OperatorConfig",
    "OperatorSpec",
    "OptimizerConfig",
    "OptimizerFactory",
    "OptimizerWrapper",
    "Outcome",
    "PHASES",
    "Phase",
    "PluginError",
    "RegistryRef",
    "RunInfo",
    "Schedule",
    "ScheduleSpec",
    "SelectionConfig",
    "Sparsity",
    "Status",
    "StepClock",
    "StepSpec",
    "Target",
    "Task",
    "TwoPassConfig",
    "TwoPassWrapper",
    "TypeConfig",
    "atomic_save",
    "atomic_write_json",
    "atomic_write_text",
    "batchnorm_layers",
    "call_model",
    "dataset",
    "epochs_of",
    "freeze_bn_stats",
    "hookimpl",
    "load_checkpoint",
    "logits_of",
    "matches",
    "model",
    "out_in",
    "params_with_grad",
    "recalibrate_bn",
    "same_unit_order",
    "select",
    "select_targets",
    "sparsity_stats",
    "to_device",
    "torch_threads",
    "unwrap_model",
]
