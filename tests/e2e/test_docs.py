"""docs/plugins.md: every example file on the page runs, through the real CLI."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support import ROOT
from tests.support.docs import BLOCK, marked_blocks

PAGE = (ROOT / "docs" / "plugins.md").read_text()


def blocks(marker: str) -> dict[str, str]:
    """Code blocks whose first line is ``# <marker>: <name>``, by name."""
    return marked_blocks(PAGE, marker)


def commands() -> list[list[str]]:
    """The 'Try them together' shell block: variables expanded, one argv per command."""
    (body,) = [b for lang, b in BLOCK.findall(PAGE) if lang == "bash" and "compressor $P" in b]
    env: dict[str, str] = {}
    argvs = []
    for line in body.strip().splitlines():
        if re.match(r"^\w+=", line):
            name, value = line.split("=", 1)
            env[name] = shlex.split(value.replace("$P", env.get("P", "")))[0]
        else:
            argvs.append(shlex.split(line.replace("$P", env.get("P", ""))))
    return argvs


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    for name, text in {**blocks("file"), **blocks("recipe")}.items():
        (folder / name).write_text(text)
    return folder


def test_every_plugin_kind_has_an_example() -> None:
    files = blocks("file")
    text = "\n".join(files.values())
    bases = ("Operator", "Schedule", "Modifier", "TwoPassWrapper", "Evaluator", "Exporter")
    for base in (*bases, "Launcher", "Logger"):
        assert f"({base})" in text, base
    for hook in ("register_models", "register_datasets", "step_finished", "register_commands",
                 "register_loggers", "run_finished"):  # fmt: skip
        assert f"def {hook}" in text, hook


def test_a_model_and_dataset_plugin_fits_in_30_lines() -> None:
    lines = blocks("file")["my_zoo.py"].strip().splitlines()
    assert len(lines) <= 30


def test_the_examples_run_together_through_the_cli(examples: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    results = []
    for argv in commands():
        assert argv[0] == "compressor"
        result = subprocess.run(
            [sys.executable, "-m", "compressor.cli", *argv[1:]],
            cwd=examples,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, (argv, result.stderr)
        results.append(result)
    validate, run, export, zeros, compare = results
    assert "together.yaml: ok" in validate.stdout
    report = json.loads((examples / "run" / "report.json").read_text())
    assert [m["type"] for m in report["modifiers"]] == ["l1", "oneshot"]
    assert report["modifiers"][0]["l1"] > 0
    assert report["evaluations"]["nonzeros"]["columns"][0]["title"] == "non-zero k"
    assert "non-zero k" in run.stdout
    assert report["sparsity"]["per_layer"]["0.weight"] == pytest.approx(0.5)
    arrays = np.load(examples / "run" / "export-npz.npz")
    assert float((arrays["0.weight"] == 0).mean()) == pytest.approx(0.5)
    assert "0.weight: 50.0%" in zeros.stdout
    observed = re.findall(r"^step (\d+): loss [\d.]+, sparsity ([\d.]+)$", run.stderr, re.M)
    assert observed == [("10", "0.250"), ("20", "0.250"), ("30", "0.250"), ("40", "0.250")]
    # the launcher ran the trial in a worker process, which loaded every --plugin file again
    assert "started (pool)" in compare.stderr
    studied = json.loads(
        (examples / "study" / "runs" / "random-prune-seed0" / "report.json").read_text()
    )
    assert studied["evaluations"]["nonzeros"] == report["evaluations"]["nonzeros"]
    logged = [json.loads(line) for line in (examples / "run" / "metrics.jsonl").open()]
    assert [(r["step"], r["phase"]) for r in logged[:-1] if r["phase"] != "test"] == [
        (10, "train"), (20, "train"), (30, "train"), (40, "train"), (40, "evaluate")
    ]  # fmt: skip
    assert [r["step"] for r in logged if r.get("phase") == "test"] == list(range(4, 41, 4))
    assert (
        logged[-2]["nonzeros:thousands"]
        == report["evaluations"]["nonzeros"]["metrics"]["thousands"]
    )
    assert logged[-1] == {"status": "done", "error": None}
    assert "random-prune: done, rank 0 of 1" in run.stderr


def test_the_toolkit_example_keeps_exact_counts_per_row(examples: Path) -> None:
    import runpy

    row_topk = runpy.run_path(str(examples / "row_topk.py"))["RowTopK"]
    operator = row_topk(row_topk.Config(kind="row_topk"))
    w = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0], [4.0, -5.0, 1.0, 0.5]])
    (mask,) = operator.compute_masks({"w": w}, 0.5, None).values()
    assert mask.tolist() == [
        [False, True, True, False],  # ties at the threshold: both 3s
        [True, True, False, False],  # all equal: the earliest ones
        [True, True, False, False],  # by |w|
    ]


def test_the_task_example_trains_and_reports_its_metric(examples: Path) -> None:
    """docs/plugins.md's Task (with the toolkit's operator) through ``compressor run``."""
    (block,) = [b for lang, b in BLOCK.findall(PAGE) if lang == "text" and "margin.yaml" in b]
    argv = shlex.split(block.strip())
    assert argv[0] == "compressor"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "compressor.cli", *argv[1:], "--out", "margin"],
        cwd=examples,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((examples / "margin" / "report.json").read_text())
    assert report["metric"] == {
        "name": "error",
        "title": "test error",
        "higher_is_better": False,
        "percent": True,
    }
    assert 0.0 <= report["metrics"]["test_error"] <= 1.0
    assert report["sparsity"]["per_layer"]["0.weight"] == 0.5
    assert "test error" in result.stdout


def test_the_study_example_in_comparing_md_validates(tmp_path: Path) -> None:
    from compressor.host.manager import load_plugins
    from compressor.study.spec import load_study

    page = (ROOT / "docs" / "comparing.md").read_text()
    (study,) = [body for lang, body in BLOCK.findall(page) if lang == "yaml" and "recipes:" in body]
    (tmp_path / "studies").mkdir()
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        (tmp_path / recipe.name).write_text(recipe.read_text())
    (tmp_path / "studies" / "my-study.yaml").write_text(study)
    loaded = load_study(
        tmp_path / "studies" / "my-study.yaml", load_plugins(autoload=False).registries
    )
    assert loaded.baseline == "SGD"
    assert loaded.labels == ["SGD", "GMP 90%", "GMP 70%"]
    assert len(loaded.trials) == 9


def test_the_own_loop_example_in_data_md_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    page = (ROOT / "docs" / "data.md").read_text()
    (code,) = [
        body for lang, body in BLOCK.findall(page) if lang == "python" and "Session(" in body
    ]
    script = tmp_path / "own_loop.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")
    assert "8 optimizer steps, sparsity 0.50" in capsys.readouterr().out


def test_the_recipe_in_logging_md_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/logging.md's recipe through ``compressor run``, on fewer samples; its MLflow
    snippet validates in it."""
    import csv

    import yaml

    from compressor.cli.main import main
    from compressor.host.manager import load_plugins
    from compressor.recipe.schema import recipe_from_text

    pytest.importorskip("torch.utils.tensorboard", reason="needs the 'tensorboard' extra")
    page = (ROOT / "docs" / "logging.md").read_text()
    yamls = [body for lang, body in BLOCK.findall(page) if lang == "yaml"]
    (recipe,) = [body for body in yamls if body.startswith("# recipe: logged.yaml")]
    (command, *_) = [body for lang, body in BLOCK.findall(page) if lang == "bash"]
    assert command.splitlines()[0] == "compressor run logged.yaml"
    (tmp_path / "logged.yaml").write_text(recipe)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "logged.yaml", "--quiet", "--set", "data.samples=500"]) == 0
    out = tmp_path / "runs" / "gmp-logged"
    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = {phase: sorted({int(r["step"]) for r in rows if r["phase"] == phase})
             for phase in ("train", "test", "evaluate")}  # fmt: skip
    # 400 training samples in batches of 128: 4 steps an epoch, 12 in all
    assert steps == {"train": [5, 10, 12], "test": [4, 8, 12], "evaluate": [12]}
    assert {r["name"] for r in rows if r["phase"] == "evaluate"} >= {"oneshot:0.9"}
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1

    mlflow = [body for body in yamls if "name: mlflow" in body]
    assert mlflow
    for snippet in mlflow:
        data = {**yaml.safe_load(recipe), **yaml.safe_load(snippet)}
        registries = load_plugins(autoload=False).registries
        assert recipe_from_text(yaml.safe_dump(data), registries=registries).config.log.to


def test_the_overview_in_recipes_md_validates_and_shows_every_section() -> None:
    import yaml

    from compressor.host.manager import load_plugins
    from compressor.recipe.schema import build_recipe_model, recipe_from_text

    page = (ROOT / "docs" / "recipes.md").read_text()
    overview = next(body for lang, body in BLOCK.findall(page) if lang == "yaml")
    registries = load_plugins(autoload=False).registries
    recipe_from_text(overview, "recipes.md", registries=registries)
    assert list(yaml.safe_load(overview)) == list(build_recipe_model(registries).model_fields)
