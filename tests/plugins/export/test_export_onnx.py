"""``onnx`` export: through the CLI on a tiny CNN and a tiny GPT-2 (fp32 and static int8), the
physically smaller graph of a channel-pruned model, and the clean one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install 'compressor[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'compressor[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra: pip install 'compressor[onnx]'")

from compressor.cli.main import main  # noqa: E402
from compressor.train.restore import restore_run  # noqa: E402
from compressor_plugins.export.onnx_export import OnnxExportError, export_graph, export_onnx  # noqa: E402
from tests.plugins.export.test_export_pruned import channel_masks, masked_copy  # noqa: E402
from tests.plugins.zoo.test_hf import GPT2, write_text  # noqa: E402
from tests.support import ROOT  # noqa: E402
from tests.support.channel import RESNET_SHAPE, mnist1d_cnn, resnet20  # noqa: E402
from tests.support.docs import marked_blocks  # noqa: E402

CNN = """\
version: 1
name: tinycnn
model: {name: mnist1d_cnn, width: 8}
data: {name: mnist1d, samples: 400, seed: 1, batch_size: 32}
train: {epochs: 1, seed: 0}
optimizer: {name: sgd, lr: 0.05}
"""


def load(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx-cnn")
    (root / "r.yaml").write_text(CNN)
    assert main(["run", str(root / "r.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def test_cli_fp32_export_matches_torch_at_any_batch_size(cnn_run: Path) -> None:
    assert main(["export", str(cnn_run), "--format", "onnx"]) == 0
    report = json.loads((cnn_run / "export-onnx.json").read_text())
    assert report["fp32"]["relative_diff"] <= 1e-4 and report["dynamic_axes"]["batch"]
    model = restore_run(cnn_run).model.eval()
    graph = load(cnn_run / "export-onnx.onnx")
    (name,) = [i.name for i in graph.get_inputs()]
    for batch in (1, 5):
        x = torch.randn(batch, 40, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        got = graph.run(None, {name: x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_cli_int8_export_is_quantized_and_checked(cnn_run: Path) -> None:
    out = cnn_run / "int8" / "model.onnx"
    assert main(["export", str(cnn_run), "--format", "onnx", "--int8", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [
        i for i in onnx.load(str(out)).graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights  # int8 weights are stored, per channel
    check = report["int8_check"]
    assert report["int8"] and 0.5 <= check["top1_agreement"] <= 1.0
    assert 0 < check["max_abs_diff"] < check["logit_scale"]
    assert report["bytes"] == out.stat().st_size
    assert not list(out.parent.glob(".onnx-*"))  # no temporary left behind
    # The stem (the first conv, reading the signal) and the classifier stay in float.
    graph = onnx.load(str(out)).graph
    weighted = [n for n in graph.node if n.op_type in {"Conv", "Gemm", "MatMul"}]
    assert report["int8_float_nodes"] == [weighted[0].name, weighted[-1].name]
    produced_by = {o: n for n in graph.node for o in n.output}
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for node in weighted:
        weight = node.input[1]
        quantized = (
            weight not in float_weights and produced_by[weight].op_type == "DequantizeLinear"
        )
        assert quantized == (node.name not in report["int8_float_nodes"])


def test_int8_without_float_ends_quantizes_every_layer(tmp_path: Path) -> None:
    model = mnist1d_cnn().eval()
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "all.onnx"
    report = export_onnx(model, out, x, calibration=lambda: iter([x]), int8=True, float_ends=False)
    assert report["int8_float_nodes"] == []
    graph = onnx.load(str(out)).graph
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for node in graph.node:
        if node.op_type in {"Conv", "Gemm", "MatMul"}:
            assert node.input[1] not in float_weights


def test_channel_pruned_model_exports_the_smaller_graph(tmp_path: Path) -> None:
    model = mnist1d_cnn().eval()
    masks = channel_masks(model)
    masked = masked_copy(model, masks)
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(0))
    dense_report = export_onnx(masked, tmp_path / "dense.onnx", x)
    report = export_onnx(masked, tmp_path / "small.onnx", x, masks=masks)
    assert report["channels_removed"] and not dense_report["channels_removed"]

    def weights(path: Path) -> int:
        return sum(int(np.prod(i.dims)) for i in onnx.load(str(path)).graph.initializer)

    assert weights(tmp_path / "small.onnx") < 0.6 * weights(tmp_path / "dense.onnx")
    with torch.no_grad():
        expected = masked(x).numpy()
    got = load(tmp_path / "small.onnx").run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-5


def test_int8_graph_of_a_channel_pruned_model_has_widths_of_16(tmp_path: Path) -> None:
    # ONNX Runtime's int8 convolutions are slower at 8 channels than at 16: the int8 graph keeps
    # zero channels up to 16, the fp32 graph beside it is the smaller one; both give the same
    # numbers as the masked model.
    model = resnet20()
    masks = channel_masks(model)
    masked = masked_copy(model, masks)
    x = torch.randn(16, *RESNET_SHAPE, generator=torch.Generator().manual_seed(0))
    int8, fp32 = tmp_path / "int8.onnx", tmp_path / "fp32.onnx"
    report = export_onnx(
        masked, int8, x, calibration=lambda: iter([x]), int8=True, masks=masks, fp32_path=fp32
    )
    assert report["params"]["pruned"] < report["int8_params"]["pruned"]

    def conv_widths(path: Path) -> set[int]:  # output channels of every 4-D weight
        return {i.dims[0] for i in onnx.load(str(path)).graph.initializer if len(i.dims) == 4}

    assert 8 in conv_widths(fp32) and 8 not in conv_widths(int8)
    assert conv_widths(int8) <= {16, 32}
    assert report["fp32"]["relative_diff"] <= 1e-4
    assert report["int8_check"]["top1_agreement"] >= 0.8


def test_cli_int8_export_of_a_channel_run_pads_widths_to_16(tmp_path: Path) -> None:
    # A channel-pruned run through the CLI: width 24 pruned to 12, 16 wide in the int8 graph,
    # 12 in the fp32 one; onnxruntime loads it and agrees with the model that wrote it.
    recipe = CNN.replace("width: 8", "width: 24").replace("name: tinycnn", "name: chan") + (
        "modifiers:\n  - {type: gmp, operator: {kind: channel}, "
        "schedule: {kind: linear, final: 0.5, end: 2, every: 1}}\n"
    )
    (tmp_path / "r.yaml").write_text(recipe)
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "int8" / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--int8", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["channels_removed"]
    assert report["params"]["pruned"] < report["int8_params"]["pruned"] < report["params"]["dense"]
    widths = {i.dims[0] for i in onnx.load(str(out)).graph.initializer if len(i.dims) == 3}
    assert 12 not in widths and 16 in widths
    assert report["fp32"]["relative_diff"] <= 1e-4
    assert report["int8_check"]["top1_agreement"] >= 0.8
    x = np.random.default_rng(0).standard_normal((4, 40)).astype(np.float32)
    assert load(out).run(None, {load(out).get_inputs()[0].name: x})[0].shape == (4, 10)


def test_cli_exports_a_tiny_gpt2_with_dynamic_batch_and_sequence(tmp_path: Path) -> None:
    write_text(tmp_path / "corpus.txt")
    (tmp_path / "r.yaml").write_text(
        f"name: lm\nmodel: {GPT2}\n"
        f"data: {{name: text, path: {tmp_path / 'corpus.txt'}, block_size: 16, batch_size: 8}}\n"
        "train: {epochs: 1, max_steps: 2}\noptimizer: {name: adamw, lr: 1.0e-3}\n"
    )
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "--quiet"]) == 0
    assert (
        main(["export", str(run), "--format", "onnx", "--int8", "--out", str(run / "q.onnx")]) == 0
    )
    assert main(["export", str(run), "--format", "onnx"]) == 0
    report = json.loads((run / "export-onnx.json").read_text())
    assert report["dynamic_axes"] == {"batch": True, "sequence": True}
    assert report["fp32"]["relative_diff"] <= 1e-4
    int8_report = json.loads((run / "q.json").read_text())
    assert int8_report["int8_check"]["top1_agreement"] > 0.5
    # Token ids are no features: only the LM head (the last MatMul) stays in float.
    matmuls = [
        n.name for n in onnx.load(str(run / "q.onnx")).graph.node if n.op_type in {"MatMul", "Gemm"}
    ]
    assert int8_report["int8_float_nodes"] == matmuls[-1:]
    model = restore_run(run).model.eval()
    graph = load(run / "export-onnx.onnx")
    assert [i.name for i in graph.get_inputs()] == ["input_ids"]
    assert [o.name for o in graph.get_outputs()] == ["logits"]
    ids = torch.randint(0, 257, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    got = graph.run(None, {"input_ids": ids.numpy()})[0]
    assert got.shape == (3, 11, expected.shape[-1])
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


def test_untraceable_module_is_one_line_naming_it(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), Branchy(), nn.Linear(4, 2))
    with pytest.raises(OnnxExportError) as caught:
        export_graph(model, torch.randn(3, 4), tmp_path / "m.onnx")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cannot export Sequential to ONNX: module 1 (Branchy): ")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_errors_are_one_clean_line(
    cnn_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(empty), "--format", "onnx"]) == 2
    assert main(["export", str(cnn_run), "--format", "state_dict", "--int8"]) == 2
    assert "--int8 does not apply to --format state_dict" in capsys.readouterr().err
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"keep")
    assert main(["export", str(cnn_run), "--format", "onnx", "--out", str(existing)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: {existing} exists: pass --overwrite to replace it"
    assert existing.read_bytes() == b"keep" and not existing.with_suffix(".json").exists()
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # importing it raises ImportError
    out = tmp_path / "x.onnx"
    assert main(["export", str(cnn_run), "--format", "onnx", "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: --format onnx needs the 'onnxscript' package: pip install 'compressor[onnx]'"
    )
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_the_loading_code_in_exporting_md_runs(cnn_run: Path) -> None:
    if not (cnn_run / "export-onnx.onnx").exists():
        assert main(["export", str(cnn_run), "--format", "onnx"]) == 0
    page = (ROOT / "docs" / "exporting.md").read_text()
    code = marked_blocks(page, "example")["load-onnx"]
    namespace: dict[str, object] = {"run": cnn_run}
    exec(compile(code, "exporting.md", "exec"), namespace)
    x = torch.from_numpy(namespace["x"])  # type: ignore[arg-type]
    with torch.no_grad():
        expected = restore_run(cnn_run).model.eval()(x)
    assert namespace["predicted"].tolist() == expected.argmax(-1).tolist()  # type: ignore[attr-defined]
