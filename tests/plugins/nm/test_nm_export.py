"""Semi-structured export: refuses cleanly without a capable GPU; converts 2:4 Linears on one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(1)

from compressor.contract.errors import CompressorError  # noqa: E402
from compressor.host.manager import Plugins, load_plugins  # noqa: E402
from compressor.plugin_api import nm_mask  # noqa: E402
from compressor_plugins.export import semi_structured as nm_export  # noqa: E402
from tests.support import ROOT  # noqa: E402

NO_GPU = (
    "semi-structured export needs a CUDA GPU with compute capability >= 8.0; "
    "this machine has none — nothing was written"
)


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return load_plugins(autoload=False)


def mlp_24(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Two 2:4 layers the kernel accepts and a 10-row head it does not."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.weight.mul_(nm_mask(layer.weight, 2, 4))
    return model.to(dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_export_raises_a_clear_error_and_writes_nothing(
    plugins: Plugins, tmp_path: Path
) -> None:
    path = tmp_path / "out" / "model.pt"
    with pytest.raises(CompressorError) as info:
        exporter = nm_export.SemiStructuredExporter(nm_export.SemiStructuredExporter.Config())
        exporter.export(None, mlp_24(), path)  # type: ignore[arg-type]
    assert str(info.value) == NO_GPU
    assert list(tmp_path.iterdir()) == []


def test_an_old_gpu_is_refused_with_its_capability(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(nm_export, "cuda_capability", lambda: (7, 5))
    with pytest.raises(CompressorError, match=r"this GPU has 7\.5 — nothing was written"):
        nm_export.export_semi_structured(mlp_24(), tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_the_format_is_registered_like_every_export_format(plugins: Plugins) -> None:
    entry = plugins.registries.exporters.get("semi-structured")
    assert entry.cls is nm_export.SemiStructuredExporter
    assert "semi-structured" in plugins.registries.provided_by(entry.plugin.name)["exporters"]


def test_eligibility_reasons_without_a_gpu() -> None:
    half = torch.float16
    w = torch.randn(64, 64)
    pattern = nm_mask(w, 2, 4)
    assert "dtype torch.float32 is not supported" in nm_export.ineligible_reason(
        w * pattern, w.dtype
    )
    rows, cols = nm_export.min_shape(half)
    assert rows >= 8 and cols >= 8 and 64 % rows == 0 and 64 % cols == 0
    assert "not 2:4" in nm_export.ineligible_reason(w.half(), half)
    assert nm_export.ineligible_reason((w * pattern).half(), half) == ""
    odd = torch.randn(10, 64)
    odd *= nm_mask(odd, 2, 4)
    assert "not a multiple of the kernel's minimum" in nm_export.ineligible_reason(odd.half(), half)


def test_export_dtype_keeps_half_and_casts_float() -> None:
    assert nm_export.export_dtype(mlp_24(torch.bfloat16)) == (torch.bfloat16, "")
    dtype, cast = nm_export.export_dtype(mlp_24())
    assert dtype == torch.float16 and "cast from torch.float32" in cast


@pytest.mark.cuda
@pytest.mark.skipif(
    nm_export.cuda_capability() is None or nm_export.cuda_capability() < (8, 0),  # type: ignore[operator]
    reason="needs a CUDA GPU with compute capability >= 8.0",
)
def test_export_converts_eligible_layers_and_matches_the_dense_model(tmp_path: Path) -> None:
    model = mlp_24()
    path, report = nm_export.export_semi_structured(model, tmp_path / "model.pt")
    assert path.is_file() and nm_export.report_path(path).is_file()
    assert report["converted"] == ["0", "2"]
    assert "not a multiple" in report["skipped"]["4"]
    loaded = nm_export.load_semi_structured(mlp_24(), path)
    x = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    reference = model.to("cuda", torch.float16)(x)
    torch.testing.assert_close(loaded(x), reference, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_benchmark_says_it_needs_cuda_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    script = ROOT / "bench" / "semi_structured.py"
    spec = importlib.util.spec_from_file_location("bench_semi_structured", script)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--out", str(tmp_path / "r.json")]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
