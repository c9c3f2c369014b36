"""Every recipe and study that README.md or docs/ name runs through the CLI from a fresh
checkout's point of view: from an empty current directory, with no files but the repository's,
on a tiny budget given with ``--set`` (issue 25)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compressor.cli.main import main
from compressor.recipe.source import read_yaml
from compressor.study.spec import is_study
from tests.support import ROOT
from tests.support.vision import torchvision_missing, write_imagefolder

NAMED = re.compile(r"(?:recipes|bench/studies)/[\w./-]+?\.ya?ml")
TINY = ["train.max_steps=2"]


def named_paths() -> list[str]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return sorted({m for doc in docs for m in NAMED.findall(doc.read_text())})


def data_of(path: Path) -> dict[str, object]:
    data = read_yaml(path).data
    if is_study(data):
        shared = data.get("shared", {}).get("data")
        if shared:
            return dict(shared)
        first = data["recipes"][0]
        data = read_yaml(path.parent / (first if isinstance(first, str) else first["path"])).data
    return dict(data.get("data", {}))


def budget(path: Path, tmp_path: Path) -> list[str]:
    """``--set`` items that keep the run tiny; a folder of images where the recipe is about
    the user's own (imagefolder needs them: nothing else can stand in)."""
    data = data_of(path)
    sets = list(TINY)
    if "samples" in data:
        sets.append("data.samples=400")
    if data.get("name") == "text":
        sets.append("data.block_size=16")
    if data.get("name") == "imagefolder":
        missing = torchvision_missing()
        if missing:
            pytest.skip(f"{path.name}: {missing}")
        root = write_imagefolder(tmp_path / "images")
        sets += [f"data.root={root}", "data.image_size=32", "data.batch_size=8"]
        sets += ["data.num_workers=0"]
    return [item for text in sets for item in ("--set", text)]


def test_the_docs_name_recipes_and_studies() -> None:
    named = named_paths()
    assert "recipes/gpt2-tiny-causal-lm.yaml" in named and "recipes/studies/mnist1d.yaml" in named
    missing = [name for name in named if not (ROOT / name).is_file()]
    assert not missing, f"named in the docs but not in the repository: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", named_paths())
def test_named_recipe_or_study_runs_from_an_empty_directory(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ROOT / name
    work = tmp_path / "fresh"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing here: relative data paths must not depend on it
    sets = budget(path, tmp_path)
    if not is_study(read_yaml(path).data):
        assert main(["run", str(path), "--out", "run", "--quiet", *sets]) == 0
        report = json.loads((work / "run" / "report.json").read_text())
        assert report["steps"] == 2
    else:
        assert main(["compare", str(path), "--out", "study", "--quiet", "--seeds", "0", *sets]) == 0
        assert (work / "study" / "report.md").is_file()
