"""The benchmark scripts run (smoke size) and report exact results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

# Local checkouts of the released SAM and CrAM code (bench/step_cost.py --sam-repo/--cram-repo).
REFERENCE_ENV = {"sam": "COMPRESSOR_REF_SAM", "cram": "COMPRESSOR_REF_CRAM"}
SKIP_LINE = "reference rows skipped (sam-ref, cram+-ref)"


def torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def run_smoke(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()  # a table was printed
    return result.stdout


def env_without_references() -> dict[str, str]:
    env = dict(os.environ)
    for name in REFERENCE_ENV.values():
        env.pop(name, None)
    return env


@pytest.mark.parametrize("script", ["mask_speed", "overhead"])
def test_bench_smoke(script: str) -> None:
    run_smoke(script)
    if script == "mask_speed":
        data = json.loads((ROOT / "bench" / "results" / "mask_speed-smoke.json").read_text())
        assert data["exact"] is True


def test_step_cost_smoke_without_references(tmp_path: Path) -> None:
    """Without checkouts the compressor rows run and one line says how to add the references."""
    output = tmp_path / "step_cost-smoke.json"
    stdout = run_smoke("step_cost", "--output", str(output), env=env_without_references())
    skip = [line for line in stdout.splitlines() if line.startswith("reference rows skipped")]
    assert len(skip) == 1 and skip[0].startswith(SKIP_LINE)
    assert "--sam-repo DIR" in skip[0] and "--cram-repo DIR" in skip[0]
    assert "COMPRESSOR_REF_SAM" in skip[0] and "COMPRESSOR_REF_CRAM" in skip[0]
    data = json.loads(output.read_text())
    assert data["smoke"] is True
    assert data["references"] == {}
    assert data["references_skipped"] == ["sam-ref", "cram+-ref"]
    assert data["equivalence_passed"] is None
    assert [row["model"] for row in data["results"]] == ["mnist1d_cnn", "resnet20"]
    for row in data["results"]:
        for method in ("sgd", "sam", "cram+"):
            assert row[method]["wall"]["median_s"] > 0
        assert "sam-ref" not in row and "cram+-ref" not in row
        assert row["vs_reference"] == {}
        assert row["equivalence"] is None


def test_step_cost_smoke_with_references(tmp_path: Path) -> None:
    """With the released code checked out (COMPRESSOR_REF_SAM, COMPRESSOR_REF_CRAM) the
    references are timed, and one step of each equals compressor's."""
    dirs = {key: os.environ.get(name, "") for key, name in REFERENCE_ENV.items()}
    absent = [REFERENCE_ENV[k] for k, d in dirs.items() if not d or not Path(d).is_dir()]
    if absent:
        pytest.skip(
            f"{' and '.join(absent)} not set to a directory: point COMPRESSOR_REF_SAM at a"
            " checkout of https://github.com/davda54/sam and COMPRESSOR_REF_CRAM at one of"
            " https://github.com/IST-DASLab/CrAM"
        )
    output = tmp_path / "step_cost-smoke.json"
    stdout = run_smoke("step_cost", "--output", str(output))
    assert "reference rows skipped" not in stdout
    check_step_cost(json.loads(output.read_text()), dirs)


def check_step_cost(data: dict, dirs: dict[str, str]) -> None:
    """Reference steppers timed, ratios to them reported, and their updates equal compressor's."""
    assert data["smoke"] is True
    assert data["equivalence_passed"] is True
    assert data["references_skipped"] == []
    assert set(data["references"]) == {"sam-ref", "cram+-ref"}
    for name, key in (("sam-ref", "sam"), ("cram+-ref", "cram")):
        ref = data["references"][name]
        assert ref["path"] == str(Path(dirs[key]).expanduser().resolve())
        assert len(ref["tested_commit"]) == 40
        assert ref["files_sha256"] and all(len(h) == 64 for h in ref["files_sha256"].values())
    assert [row["model"] for row in data["results"]] == ["mnist1d_cnn", "resnet20"]
    for row in data["results"]:
        for method in ("sgd", "sam", "cram+", "sam-ref", "cram+-ref"):
            assert row[method]["wall"]["median_s"] > 0
        assert set(row["vs_reference"]) == {"sam", "cram+"}
        for method, ref in (("sam", "sam-ref"), ("cram+", "cram+-ref")):
            pair = row["vs_reference"][method]
            assert pair["reference"] == ref
            for clock in ("wall", "cpu"):
                r = pair[clock]
                assert 0 < r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"]
        eq = row["equivalence"]
        assert eq["passed"] is True
        assert eq["sam"]["equal"] is True and eq["sam"]["max_abs_diff"] <= 1e-6
        cram = eq["cram+"]
        assert cram["equal"] is True and cram["max_abs_diff"] <= 1e-6
        assert cram["kept_compressor"] == cram["kept_reference"] and cram["mask_differences"] == 0
        # at the timed sparsities the release keeps at most one weight fewer (documented)
        for timed in eq["cram+_timed_sparsities"]:
            assert 0 <= timed["kept_compressor"] - timed["kept_reference"] <= 1


def test_sparsegpt_cost_smoke(tmp_path: Path) -> None:
    """Compressor's SparseGPT and the plain Algorithm 1 agree, and both are timed and sized."""
    output = tmp_path / "sparsegpt_cost-smoke.json"
    stdout = run_smoke("sparsegpt_cost", "--output", str(output))
    assert "| layer | implementation |" in stdout
    data = json.loads(output.read_text())
    assert data["smoke"] is True
    assert [row["layer"] for row in data["results"]] == ["64->192", "192->64"]
    for row in data["results"]:
        names = {"compressor", "plain", "compressor solve", "plain solve"}
        assert set(row["time_s"]) == names
        assert all(row["time_s"][name]["median"] > 0 for name in names)
        if Path("/proc/self/clear_refs").exists():
            assert all(row["peak_mib"][name] is not None for name in names)
        agreement = row["agreement"]
        assert agreement["sparsity"] == {"compressor": 0.5, "plain": 0.5}
        assert agreement["mask_equal_share"] >= 0.999
        assert agreement["max_abs_diff"] < 1e-4
        errors = agreement["relative_output_error"]
        assert errors["compressor"] == pytest.approx(errors["plain"], rel=1e-3)


@pytest.mark.skipif(torch_cuda(), reason="checks the CPU behaviour: on a GPU the real check runs")
def test_gpu_check_on_cpu_skips_every_cuda_section_with_its_reason(tmp_path: Path) -> None:
    """bench/gpu_check.sh without a GPU: CUDA tests skipped, every CUDA section skipped with
    its reason, and the step and mixed-precision code run tiny on CPU (so the script that
    will run on the next GPU has run here)."""
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--work", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["environment"]["cuda_available"] is False
    assert "no CUDA device" in data["semi_structured"]["skipped"]
    steps = data["steps"]["methods"]
    assert set(steps) == {"sgd", "sam", "cram+"}
    assert all(row["vs_sgd_median"] > 0 for row in steps.values())
    precision = data["precision"]
    assert precision["device"] == "cpu"
    for name in ("fp32", "bf16"):
        assert 0.0 <= precision[name]["test_accuracy"] <= 1.0, precision[name]
    assert isinstance(precision["bf16"]["within_noise"], bool)
    tests = (out / "cuda-tests.txt").read_text()
    assert "skipped" in tests or "deselected" in tests
    assert (out / "log.txt").is_file()


def test_amortised_cost_smoke(tmp_path: Path) -> None:
    """Every k timed against SGD in whole cycles: pass 2 ran on 1/k of the 30 steps."""
    output = tmp_path / "amortised_cost-smoke.json"
    stdout = run_smoke("amortised_cost", "--output", str(output))
    assert "bar cram+ k=5 <= 1.3x SGD (cpu)" in stdout
    data = json.loads(output.read_text())
    assert data["smoke"] is True and data["steps_per_round"] == 10
    assert [row["model"] for row in data["results"]] == ["mnist1d_cnn", "resnet20"]
    for row in data["results"]:
        assert row["sgd"]["cpu"]["ratio_median"] == 1.0 and row["sgd"]["second_passes"] is None
        for method in ("sam", "cram+"):
            for k in (1, 2, 5, 10):
                entry = row[f"{method} k={k}"]
                assert (entry["steps"], entry["second_passes"]) == (30, 30 // k)
                assert entry["cpu"]["median_s"] > 0 and entry["wall"]["ratio_median"] > 0


def test_amortised_study_smoke(tmp_path: Path) -> None:
    """The sweep (8 runs, seed 0), the rule, seed 1 for k = 1, 5 and the chosen k, the tables."""
    output = tmp_path / "amortised-smoke.json"
    stdout = run_smoke("amortised", "--out", str(tmp_path / "study"), "--json", str(output))
    assert "rule: score(1) = " in stdout and "chosen k = " in stdout
    data = json.loads(output.read_text())
    chosen = data["rule"]["chosen"]
    assert chosen in (5, 10) and "largest k in {5, 10}" in data["rule"]["text"]
    assert set(data["rule"]["gaps"]) == {"5", "10"}
    for method in ("CrAM+ Multi", "SAM"):
        for k in (1, 2, 5, 10):
            seeds = data["seeds"][f"{method} k={k}"]["seeds"]
            assert seeds == ([0, 1] if k in {1, 5, chosen} else [0]), (method, k, seeds)
            assert data["seeds"][f"{method} k={k}"]["passes"] == f"{30 // k} / 30"
    bars = {row["bar"] for row in data["acceptance"]}
    assert "CrAM+ k=5 one-shot 90% >= k=1 - 0.5" in bars
    assert f"CrAM+ k={chosen} one-shot 95% >= k=1 - 0.5" in bars


def test_parallel_smoke_stores_the_same_runs_as_serial() -> None:
    """bench/parallel.py at smoke size: both stores hold the same runs and metric names."""
    run_smoke("parallel", "--serial-threads", "1", "2")
    data = json.loads((ROOT / "bench" / "results" / "parallel-smoke.json").read_text())
    one, two = data["baselines"]
    assert (one["serial_threads"], two["serial_threads"]) == (1, 2)
    for baseline in (one, two):
        assert baseline["same_runs"] is True and baseline["same_metric_names"] is True
        assert baseline["runs"] == 8 and baseline["serial_wall_s"] > 0
        assert baseline["speedup"] == baseline["serial_wall_s"] / data["parallel_wall_s"]
    # one thread per worker, as the one-thread serial study: the same results to the last bit
    assert one["largest_metric_difference"] == 0


def test_step_cost_optimizer_only_feeds_the_fixed_gradients() -> None:
    """--optimizer-only replaces both passes by fixed gradients: one SAM step is then exactly
    one base SGD step with those gradients (pass 2 sees the same ones), and the smoke run
    labels its rows."""
    import copy

    import torch

    from bench import step_cost

    torch.manual_seed(0)
    model = step_cost.MNIST1DCNN(40, 10, 8)
    fixed = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    x, y = torch.randn(4, 40), torch.randint(0, 10, (4,))
    stepped, expected = copy.deepcopy(model), copy.deepcopy(model)
    step_cost.make_stepper(stepped, step_cost.METHODS["sam"], x, y, fixed)()
    sgd = torch.optim.SGD(expected.parameters(), **step_cost.SGD_SETTINGS)
    for name, p in expected.named_parameters():
        p.grad = fixed[name].clone()
    sgd.step()
    for (name, a), b in zip(stepped.named_parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b), name
    data = run_smoke("step_cost", "--optimizer-only", env=env_without_references())
    assert "one global magnitude mask" in data
    result = json.loads((ROOT / "bench" / "results" / "step_cost-optimizer-smoke.json").read_text())
    assert result["optimizer_only"] is True
    assert all(row["optimizer_only"] for row in result["results"])


def test_llm_depth_smoke(tmp_path: Path) -> None:
    """Every method in both modes is timed at N and 2N blocks, with the ratio."""
    pytest.importorskip("transformers")
    output = tmp_path / "llm_depth-smoke.json"
    stdout = run_smoke("llm_depth", "--output", str(output))
    assert "| method | sequential |" in stdout
    data = json.loads(output.read_text())
    assert data["smoke"] is True
    assert {(r["method"], r["sequential"]) for r in data["results"]} == {
        (m, s) for m in ("sparsegpt 0.5", "gptq int4 g128", "wanda 0.5") for s in ("block", "exact")
    }
    for row in data["results"]:
        assert row["ratio"] == row["time_s"]["2N"]["median"] / row["time_s"]["N"]["median"]


def test_llm_ptq_smoke_compresses_the_pretrained_model_with_every_method(tmp_path: Path) -> None:
    """The language-model bench (without its peer): a stdlib-text model pretrained into the
    cache, every method in both modes scored by the shared perplexity, and the depth ratio."""
    pytest.importorskip("transformers")
    output = tmp_path / "llm_ptq-smoke.json"
    env = {**os.environ, "COMPRESSOR_BENCH_CACHE": str(tmp_path / "cache")}
    stdout = run_smoke(
        "llm_ptq", "--modes", "block", "exact", "--repeats", "2", "--output", str(output), env=env
    )
    assert "| method | library | mode |" in stdout
    data = json.loads(output.read_text())
    methods = {"gptq", "rtn", "sparsegpt50", "sparsegpt24", "wanda50"}
    assert {(r["method"], r["mode"]) for r in data["results"]} == {
        (m, mode) for m in methods for mode in ("block", "exact")
    }
    for row in data["results"]:
        assert row["library"] == "compressor"
        assert len(row["samples"]["seconds"]) == 2  # --repeats: the median of two launches
        assert min(row["samples"]["seconds"]) <= row["seconds"] <= max(row["samples"]["seconds"])
        assert 1.0 < row["perplexity"] < 1e4  # finite, a real score
        weights = __import__("torch").load(Path(row["out"]) / "weights.pt")
        down = weights["model.layers.0.mlp.down_proj.weight"]
        zeros = float((down == 0).float().mean())
        assert (
            zeros == 0.5
            if "sparsegpt" in row["method"] or "wanda" in row["method"]
            else zeros < 0.5
        )
        assert "lm_head.weight" in weights
        assert not (weights["lm_head.weight"] == 0).any()  # the LM head stays dense
    assert {(r["library"], r["mode"]) for r in data["depth"]} == {
        ("compressor", "block"),
        ("compressor", "exact"),
    }


def test_llm_cram_smoke_fine_tunes_alike_then_one_shots_every_model(tmp_path: Path) -> None:
    """Every fine-tune starts from the same model on the same first batch (equal first loss),
    then differs; each is one-shot compressed at the asked sparsity; margins are CrAM+'s best
    one-shot minus SparseGPT after AdamW."""
    pytest.importorskip("transformers")
    output = tmp_path / "llm_cram-smoke.json"
    env = {**os.environ, "COMPRESSOR_BENCH_CACHE": str(tmp_path / "cache")}
    stdout = run_smoke("llm_cram", "--output", str(output), env=env)
    assert "| fine-tune | dense | magnitude 50% |" in stdout
    data = json.loads(output.read_text())
    rows = {row["finetune"]: row for row in data["results"]}
    assert list(rows) == ["adamw", "cram+ {50,70}%", "cram+ 2:4"]
    first = {row["losses"][0] for row in rows.values()}
    last = {row["losses"][-1] for row in rows.values()}
    assert len(first) == 1 and len(last) == 3
    for row in rows.values():
        assert len(row["losses"]) == 3
        for column, sparsity in row["sparsity"].items():
            assert sparsity == pytest.approx(0.7 if "70%" in column else 0.5, abs=5e-3)
            assert 1.0 < row["oneshot"][column] < 1e4
    base = rows["adamw"]["oneshot"]
    for name in ("cram+ {50,70}%", "cram+ 2:4"):
        for target in ("50%", "70%", "2:4"):
            best = min(
                rows[name]["oneshot"][f"{m} {target}"] for m in ("magnitude", "wanda", "sparsegpt")
            )
            assert data["margins"][name][target] == best - base[f"sparsegpt {target}"]


def test_llm_cram_merge_joins_side_by_side_runs(tmp_path: Path) -> None:
    """Fine-tunes run as separate processes join into one table, in the fixed row order."""
    from bench import llm_cram

    columns = [f"{m} {t}" for m in llm_cram.ONESHOTS for t in llm_cram.TARGETS]

    def part(name: str, value: float) -> Path:
        row = {"finetune": name, "dense": value, "oneshot": dict.fromkeys(columns, value)}
        path = tmp_path / f"{value}.json"
        path.write_text(json.dumps({"machine": {}, "settings": {}, "results": [row]}))
        return path

    files = [part("cram+ 2:4", 4.0), part("adamw", 3.0), part("cram+ {50,70}%", 2.5)]
    output = tmp_path / "merged.json"
    assert llm_cram.main(["--merge", *map(str, files), "--output", str(output)]) == 0
    data = json.loads(output.read_text())
    assert [row["finetune"] for row in data["results"]] == ["adamw", "cram+ {50,70}%", "cram+ 2:4"]
    assert data["margins"] == {
        "cram+ {50,70}%": {"50%": -0.5, "70%": -0.5, "2:4": -0.5},
        "cram+ 2:4": {"50%": 1.0, "70%": 1.0, "2:4": 1.0},
    }
