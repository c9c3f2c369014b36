"""``onnx`` export: a finished run as ``model.onnx`` for ONNX Runtime, fp32 or static int8.

The graph comes from torch's dynamo exporter (``torch.onnx.export(dynamo=True)``) with a
dynamic batch axis (and a dynamic sequence axis for token inputs); Hugging Face models are
exported with ``use_cache=False`` so the graph maps inputs to logits only. Channel-pruned runs
export the physically smaller model (the ``pruned`` exporter's removal), so the saving is in the
graph, not only in the masks.

``int8=True`` writes a static W8A8 model in QDQ form: onnxruntime's ``quantize_static`` rewrites
the graph (weights per output channel, int8; activations uint8) with activation ranges
calibrated on the recipe's calibration data — the fixed subset the one-shot evaluator re-
calibrates BN on. The stem and the output layer stay in float, as is usual, unless
``float_ends=False`` (:func:`float_end_nodes`). Every file is checked before it is moved into
place: ONNX Runtime against the torch model on a calibration batch (fp32: max |Δ| / max |logit|
≤ ``rtol``; int8: top-1 agreement and max |Δ|), and the figures are written next to it as
``<stem>.json``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    EvaluationContext,
    Exporter,
    InputError,
    TypeConfig,
    atomic_write_json,
    export_pruned,
    hookimpl,
    logits_of,
    require_package,
)

FORMAT = "compressor-onnx/1"
REQUIRES = (("onnx", "onnx"), ("onnxscript", "onnx"), ("onnxruntime", "onnx"))
FP32_RTOL = 1e-4  # max |Δ| relative to the logits' scale, ORT vs torch (issue 22)
OPSET = 18


class OnnxExportError(InputError):
    """The model cannot be exported to ONNX, or the exported graph does not match it: the
    user's model is the problem, so the CLI says so in one line and exits with code 2."""


def require_onnx() -> None:
    """Import-check the ``onnx`` extra; a missing package names the extra to install."""
    for module, extra in REQUIRES:
        require_package(module, extra, "ONNX export")


class _Logits(nn.Module):
    """The model as a function of named tensors to one logits tensor (what ONNX exports)."""

    def __init__(self, model: nn.Module, names: list[str] | None) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.names is None:
            return logits_of(self.model(tensors[0]))
        return logits_of(self.model(**dict(zip(self.names, tensors, strict=True))))


def input_names(inputs: Any) -> list[str]:
    """The graph's input names: the mapping's keys (HF style), ``input_ids`` for a tensor of
    token ids, else ``input``."""
    if isinstance(inputs, Mapping):
        return list(inputs)
    return ["input_ids"] if _is_token(inputs) else ["input"]


def as_tuple(inputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(inputs.values()) if isinstance(inputs, Mapping) else (inputs,)


def _is_token(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() and tensor.dim() == 2


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def _culprit(exc: BaseException, model: nn.Module) -> str:
    """The innermost submodule of ``model`` whose ``forward`` the failure passed through."""
    names = {id(module): name for name, module in model.named_modules()}
    found = ""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        trace: TracebackType | None = error.__traceback__
        while trace is not None:
            owner = trace.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                found = names[id(owner)] or found
            trace = trace.tb_next
        error = error.__cause__ or error.__context__
    return found


def _reason(exc: BaseException) -> str:
    """The first meaningful line of the exporter's error (its messages run to pages)."""
    error: BaseException = exc
    while error.__cause__ is not None:  # torch wraps the real reason
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's progress prints and warnings."""
    import warnings

    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(model: nn.Module, inputs: Any, path: Path) -> dict[str, Any]:
    """Write ``model`` (eval mode, a copy) as ONNX to ``path``; dynamic batch (and sequence for
    token inputs). ``inputs`` is one batch with at least two samples (a batch of one would be
    specialised). Returns the axes that were made dynamic."""
    require_onnx()
    model = copy.deepcopy(model).cpu().eval()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False  # logits only: no key/value cache outputs
    names = input_names(inputs)
    tensors = tuple(t.cpu() for t in as_tuple(inputs))
    batch = torch.export.Dim("batch")
    longest = _max_positions(model)
    sequence = (
        torch.export.Dim("sequence", max=longest) if longest else torch.export.Dim("sequence")
    )
    shapes = tuple({0: batch, 1: sequence} if _is_token(t) else {0: batch} for t in tensors)
    wrapper = _Logits(model, names if isinstance(inputs, Mapping) else None).eval()
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                tensors,
                None,
                dynamo=True,
                dynamic_shapes=(shapes,),
                input_names=names,
                output_names=["logits"],
                opset_version=OPSET,
                verbose=False,
            )
            assert program is not None
            program.save(str(path))
    except Exception as exc:
        where = _culprit(exc, wrapper).removeprefix("model.").removeprefix("model") or "(top)"
        kind = type(wrapper.model.get_submodule(where) if where != "(top)" else model).__name__
        raise OnnxExportError(
            f"cannot export {type(model).__name__} to ONNX: module {where} ({kind}): {_reason(exc)}"
        ) from exc
    return {"batch": True, "sequence": any(_is_token(t) for t in tensors)}


def session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (one: reproducible)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(inputs: Any) -> dict[str, Any]:
    """ONNX Runtime's input dict for one batch of model inputs."""
    return {
        name: tensor.detach().cpu().numpy()
        for name, tensor in zip(input_names(inputs), as_tuple(inputs), strict=True)
    }


class OrtModel(nn.Module):
    """An ONNX Runtime session behind ``nn.Module``'s call, so the task's evaluation (and
    latency timing) runs it like the torch model."""

    def __init__(self, ort_session: Any) -> None:
        super().__init__()
        self.session = ort_session
        self.names = [i.name for i in ort_session.get_inputs()]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        inputs: Any = kwargs if kwargs else args[0]
        if isinstance(inputs, Mapping):
            inputs = {k: v for k, v in inputs.items() if k in self.names}
        return torch.from_numpy(self.session.run(None, feeds(inputs))[0])


def against_torch(ort_session: Any, model: nn.Module, inputs: Any) -> dict[str, float]:
    """ONNX Runtime against torch on one batch: max |Δ|, the logits' scale, their ratio and
    top-1 agreement (over the last axis)."""
    names = input_names(inputs)
    with torch.no_grad():
        if isinstance(inputs, Mapping):
            reference = logits_of(model.cpu().eval()(**{k: v.cpu() for k, v in inputs.items()}))
        else:
            reference = logits_of(model.cpu().eval()(inputs.cpu()))
    ort_inputs = dict(zip(names, as_tuple(inputs), strict=True))
    got = OrtModel(ort_session)(**ort_inputs)
    diff = (got - reference.float()).abs().max().item()
    scale = reference.abs().max().item()
    return {
        "max_abs_diff": diff,
        "logit_scale": scale,
        "relative_diff": diff / scale if scale > 0 else diff,
        "top1_agreement": (got.argmax(-1) == reference.argmax(-1)).float().mean().item(),
    }


# A channel-pruned model's widths in an int8 graph: multiples of 16, keeping some of the removed
# channels as zeros. ONNX Runtime's int8 convolutions ran ResNet-20's 8-channel stage slower
# than the dense 16-channel one (10.9 against 8.1 ms at batch 64; BENCHMARKS.md D).
INT8_WIDTH = 16

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def float_end_nodes(fp32: Path) -> list[str]:
    """The stem (the first weighted node, when the model reads float features such as images or
    signals: K = 9·3 for an RGB conv, too narrow for integer kernels to pay) and the output
    layer (the last weighted node: the classifier or LM head), the two layers conventionally
    left in float. At batch 1 their quantize/dequantize nodes cost more than their int8 kernels
    save: ResNet-20 ran 2.15x the fp32 graph with them in float against 1.95x fully int8
    (BENCHMARKS.md D). Token models' first layer reads embeddings, not the input: quantized."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    reads_features = any(i.type.tensor_type.elem_type in floats for i in graph.input)
    weighted = [n.name for n in graph.node if n.op_type in WEIGHTED_OPS]
    ends = weighted[:1] if reads_features else []
    return list(dict.fromkeys(ends + weighted[-1:]))


def quantize_int8(
    fp32: Path, out: Path, calibration: Iterable[Any], *, float_ends: bool = True
) -> list[str]:
    """Static W8A8 QDQ: per-channel int8 weights, uint8 activations calibrated (min-max) on
    ``calibration`` (batches of model inputs). Every operator onnxruntime can quantize is
    (Conv, MatMul, Gemm, Add, ...): with the residual adds in int8 too, ResNet-20 at batch 1
    ran 2.1x the fp32 graph against 1.8x with Conv/MatMul/Gemm alone (BENCHMARKS.md D). With
    ``float_ends`` the stem and the output layer stay in float (:func:`float_end_nodes`).
    Returns the names of the nodes left in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = (feeds(batch) for batch in calibration)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    kept_float = float_end_nodes(fp32) if float_ends else []
    with _quiet():
        quantize_static(
            str(fp32),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            nodes_to_exclude=kept_float,
        )
    return kept_float


def smaller_model(
    model: nn.Module, masks: Mapping[str, torch.Tensor], inputs: Any, width_multiple: int = 1
) -> tuple[nn.Module, dict[str, Any]]:
    """The physically smaller model when channels can be removed (the ``pruned`` exporter's
    removal, widths kept multiples of ``width_multiple``), else ``model`` itself; with what was
    removed."""
    if not masks or isinstance(inputs, Mapping):
        return model, {"channels_removed": False}
    try:
        small, report = export_pruned(model, masks, inputs[:1].cpu(), width_multiple=width_multiple)
    except Exception as exc:  # noqa: BLE001 — a model Torch-Pruning cannot handle stays dense
        return model, {"channels_removed": False, "note": f"kept dense: {_reason(exc)}"}
    removed = report["params"]["pruned"] < report["params"]["dense"]
    return (small if removed else model), {"channels_removed": removed, "params": report["params"]}


def export_onnx(
    model: nn.Module,
    path: Path,
    inputs: Any,
    *,
    calibration: Callable[[], Iterable[Any]] | None = None,
    int8: bool = False,
    masks: Mapping[str, torch.Tensor] | None = None,
    rtol: float = FP32_RTOL,
    fp32_path: Path | None = None,
    float_ends: bool = True,
) -> dict[str, Any]:
    """Export ``model`` to ``path`` (fp32, or static int8 calibrated on ``calibration()``),
    check it against torch on ``inputs`` and return the report; ``path`` is replaced only by a
    checked file. Channel-prunable ``masks`` give the physically smaller graph; in an int8
    graph its widths are multiples of :data:`INT8_WIDTH` (some removed channels kept as zeros).
    With ``int8``, ``fp32_path`` keeps the checked fp32 graph too (unpadded), and
    ``float_ends`` leaves the stem and the output layer in float (:func:`float_end_nodes`)."""
    require_onnx()
    path = Path(path)
    if int8 and calibration is None:
        raise OnnxExportError("an int8 export needs calibration data (the run has none)")
    small, removal = smaller_model(model, masks or {}, inputs)
    report: dict[str, Any] = {"format": FORMAT, "int8": int8, "opset": OPSET, **removal}
    padded = small
    if int8 and removal.get("channels_removed"):
        wider, widths = smaller_model(model, masks or {}, inputs, INT8_WIDTH)
        if widths["params"] != removal["params"]:
            padded = wider
            report["int8_params"] = widths["params"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        report["dynamic_axes"] = export_graph(padded, inputs, fp32)
        report["fp32"] = _checked_fp32(fp32, padded, inputs, rtol)
        final = fp32
        if int8:
            assert calibration is not None
            final = Path(tmp) / "int8.onnx"
            report["int8_float_nodes"] = quantize_int8(
                fp32, final, calibration(), float_ends=float_ends
            )
            report["int8_check"] = {**against_torch(session(final), padded, inputs)}
            report["int8_check"]["bytes"] = final.stat().st_size
            if fp32_path is not None and padded is not small:  # the fp32 graph: unpadded
                export_graph(small, inputs, fp32)
                report["fp32"] = _checked_fp32(fp32, small, inputs, rtol)
            if fp32_path is not None:
                os.replace(fp32, fp32_path)
        os.replace(final, path)
    report["bytes"] = path.stat().st_size
    return report


def _checked_fp32(fp32: Path, model: nn.Module, inputs: Any, rtol: float) -> dict[str, Any]:
    """The fp32 graph against torch; an :class:`OnnxExportError` past ``rtol``."""
    check = against_torch(session(fp32), model, inputs)
    if not check["relative_diff"] <= rtol:
        raise OnnxExportError(
            f"ONNX Runtime differs from torch by {check['relative_diff']:.3g} of the "
            f"logits' scale (> {rtol:g}); nothing written"
        )
    return {**check, "bytes": fp32.stat().st_size}


def run_inputs(context: EvaluationContext, config: Any) -> tuple[Any, Callable[[], Iterator[Any]]]:
    """One check batch and the calibration batches of a run (the one-shot evaluator's subset)."""

    def calibration() -> Iterator[Any]:
        return context.calibration_batches(
            config.calibration_samples, config.seed, config.calibration_batches, config.batch_size
        )

    check_batch = next(iter(calibration()), None)
    if check_batch is None:
        raise OnnxExportError("the run has no data to check the export on")
    return check_batch, calibration


class OnnxConfig(TypeConfig):
    """Where the calibration data comes from: the same fixed training subset (samples, seed)
    the one-shot evaluator re-calibrates BN on."""

    format: Literal["onnx"] = "onnx"
    int8: bool = Field(False, description="static W8A8 (QDQ) instead of fp32")
    float_ends: bool = Field(
        True,
        description="int8: leave the stem (a layer reading the input) and the output layer in float",
    )
    calibration_samples: int = Field(1000, gt=0)
    seed: int = 0
    calibration_batches: int = Field(8, gt=0)
    batch_size: int = Field(32, gt=1)


class OnnxExporter(Exporter):
    """``--format onnx [--int8]``: ``<path>`` and its check figures in ``<path stem>.json``."""

    Config = OnnxConfig
    suffix = ".onnx"
    requires = REQUIRES

    def export(self, context: EvaluationContext, model: nn.Module, path: Path) -> Path:
        inputs, calibration = run_inputs(context, self.config)
        masks = {n: m for n in context.masks if (m := context.masks.get(n)) is not None}
        report = export_onnx(
            model,
            Path(path),
            inputs,
            calibration=calibration,
            int8=self.config.int8,
            masks=masks,
            float_ends=self.config.float_ends,
        )
        atomic_write_json(report, Path(path).with_suffix(".json"))
        return Path(path)


@hookimpl
def register_exporters(register: Callable[[type], None]) -> None:
    register(OnnxExporter)
