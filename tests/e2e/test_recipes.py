"""Every recipe in recipes/ validates and runs a few steps (data shrunk for speed)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from compressor.host.manager import Plugins
from compressor.recipe.overrides import apply_overrides
from compressor.recipe.schema import validate_source
from compressor.recipe.source import read_yaml
from compressor.train.loop import run
from tests.support import ROOT
from tests.support.vision import torchvision_missing, write_imagefolder

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
VISION = {
    "imagefolder",
    "cifar10",
}  # datasets of plugins/zoo/vision.py: smoke-run needs torchvision


def _marked(path: Path) -> object:
    vision = read_yaml(path).data.get("data", {}).get("name") in VISION
    return pytest.param(path, marks=[pytest.mark.vision] if vision else [])


def test_there_are_recipes() -> None:
    assert RECIPES


@pytest.mark.parametrize("path", [_marked(p) for p in RECIPES], ids=lambda p: p.name)
def test_recipe_validates_and_smoke_runs(path: Path, plugins: Plugins, tmp_path: Path) -> None:
    source = read_yaml(path)
    recipe = validate_source(source, plugins.registries)  # the shipped file, unchanged
    smoke = ["train.max_steps=3"]
    data = source.data.get("data", {})
    if "samples" in data:
        smoke.append("data.samples=1000")
    if data.get("name") == "text":  # recipes that read the user's own files get generated ones
        pytest.importorskip("transformers", reason="the hf extra is not installed")
        smoke.append(f"data.path={write_corpus(tmp_path / 'corpus.txt')}")
    if data.get("name") == "imagefolder":  # the user's folder: a tiny generated one instead
        missing = torchvision_missing()
        if missing:
            pytest.skip(f"validated; smoke run {missing}")
        root = write_imagefolder(tmp_path / "images")
        smoke += [f"data.root={root}", "data.image_size=32", "data.batch_size=8"]
        smoke.append("data.num_workers=0")
    source.data = apply_overrides(source.data, smoke)
    recipe = validate_source(source, plugins.registries)
    report = run(recipe, tmp_path / "run", plugins=plugins, progress=False)
    assert report["steps"] == 3
    value = report["metrics"][f"test_{report['metric']['name']}"]
    assert math.isfinite(value) and (value <= 1.0 or not report["metric"]["percent"])


def write_corpus(path: Path, words: int = 6000) -> Path:
    """A small generated text file (nothing is downloaded)."""
    vocabulary = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "wizards",
        "hex",
        "jolly",
        "zebras",
    ]
    generator = random.Random(0)
    path.write_text(" ".join(generator.choice(vocabulary) for _ in range(words)))
    return path


def test_the_causal_lm_study_reports_perplexity_lower_is_better(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    import subprocess
    import sys

    import matplotlib.figure

    corpus = write_corpus(tmp_path / "corpus.txt")
    command = [sys.executable, "-m", "compressor.cli", "compare",
               str(ROOT / "recipes" / "studies" / "gpt2-tiny.yaml"), "--out", str(tmp_path / "study"),
               "--quiet", "--set", f"data.path={corpus}", "--set", "train.max_steps=4",
               "--set", "evaluate.oneshot.sparsities=[0.5, 0.9]"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "study" / "report.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["method", "seeds", "trained perplexity", "sparsity", "50%", "90%"]
    assert "step ×AdamW" in header
    assert "test perplexity" in result.stdout

    from compressor.study.plots import plot_curve
    from compressor.study.store import Store
    from compressor.study.summary import summarise

    captured = []
    original = matplotlib.figure.Figure.savefig
    try:
        matplotlib.figure.Figure.savefig = lambda self, *a, **k: captured.append(self)  # type: ignore[method-assign]
        summary = summarise(Store(tmp_path / "study" / "results.sqlite"), "gpt2-tiny")
        plot_curve(
            summary, "oneshot:robustness", summary.curves["oneshot:robustness"], tmp_path / "x.png"
        )
    finally:
        matplotlib.figure.Figure.savefig = original  # type: ignore[method-assign]
    ylabel = captured[0].axes[0].get_ylabel()
    assert "perplexity" in ylabel and "lower is better" in ylabel
    assert (tmp_path / "study" / "robustness.png").stat().st_size > 1000
