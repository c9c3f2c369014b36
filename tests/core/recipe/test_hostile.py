"""Every broken or hostile input is one located line and exit code 2 — through `validate`
and through `run` (or `compare` for studies) — and never a traceback (issue 12).

The corpus lives in tests/core/recipe/hostile/: one mistake per recipe file (its first line
says which), study files under studies/, and `--set` values in sets.txt. Inputs that are
binary, huge or exponential are generated here rather than committed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.cli.main import main
from tests.support import ROOT

CORPUS = ROOT / "tests" / "core" / "recipe" / "hostile"
RECIPES = sorted(CORPUS.glob("*.yaml"))
STUDIES = sorted(p for p in (CORPUS / "studies").glob("study-*.yaml"))
SETS = [line for line in (CORPUS / "sets.txt").read_text().splitlines() if line]
BASE = CORPUS / "studies" / "base.yaml"
LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): \S")


def located_once(capsys: pytest.CaptureFixture[str], code: int, *files: Path) -> str:
    captured = capsys.readouterr()
    # a warning on the way (one `warning:` line, e.g. N:M skipping a layer) is not the error
    lines = [x for x in captured.err.splitlines() if x.strip() and not x.startswith("warning: ")]
    assert code == 2, (code, captured.err, captured.out)
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    match = LOCATED.match(lines[0])
    assert match, lines[0]
    assert Path(match["file"]).name in {f.name for f in files}, lines[0]
    return lines[0]


def test_the_corpus_is_large() -> None:
    assert len(RECIPES) + len(STUDIES) + len(SETS) >= 150


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_broken_recipe_is_one_located_line(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    located_once(capsys, main(["validate", str(path)]), path)
    located_once(capsys, main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]), path)
    assert not (tmp_path / "run" / "report.json").exists()


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_broken_study_is_one_located_line(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = (
        path,
        BASE,
        CORPUS / "studies" / "is-a-list.yaml",
        CORPUS / "studies" / "is-a-scalar.yaml",
    )
    located_once(capsys, main(["validate", str(path)]), *files)
    code = main(["compare", str(path), "--out", str(tmp_path / "study"), "--quiet"])
    located_once(capsys, code, *files)


@pytest.mark.parametrize("override", SETS)
def test_broken_override_is_one_located_line(
    override: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = located_once(capsys, main(["validate", str(BASE), "--set", override]), BASE)
    assert "--set" in line
    code = main(["run", str(BASE), "--set", override, "--out", str(tmp_path / "r"), "--quiet"])
    located_once(capsys, code, BASE)


def generated(tmp_path: Path) -> dict[str, bytes]:
    valid = BASE.read_bytes()
    bomb = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8)
    )
    return {
        "latin1.yaml": valid.replace(b"hostile", "hostilé".encode("latin-1")),
        "binary.yaml": b"\x00\x01\x02\xffPK\x03\x04" * 64,
        "utf16.yaml": valid.decode().encode("utf-16"),
        "nul-in-text.yaml": valid.replace(b"hostile", b"host\x00ile"),
        "alias-bomb.yaml": (valid.decode() + bomb).encode(),
        "long-list.yaml": (valid.decode() + "description: [" + "1," * 300_000 + "1]\n").encode(),
        "huge.yaml": valid + b"#" + b"x" * (2 << 20) + b"\n",
        "deep-list.yaml": (
            valid.decode() + "description: " + "[" * 10_000 + "]" * 10_000 + "\n"
        ).encode(),
    }


@pytest.mark.parametrize("name", list(generated(Path("."))))
def test_generated_hostile_file_is_one_located_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(generated(tmp_path)[name])
    located_once(capsys, main(["validate", str(path)]), path)
    located_once(capsys, main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]), path)


BOUNDED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_CPU, (2, 2))           # seconds of CPU, not wall clock
resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))  # 200 MB of address space
from compressor.recipe.source import read_yaml
from compressor.contract.errors import RecipeError
try:
    read_yaml(sys.argv[1])
except RecipeError as exc:
    print(exc)
    sys.exit(2)
"""


@pytest.mark.parametrize("name", ["alias-bomb.yaml", "long-list.yaml", "huge.yaml"])
def test_hostile_yaml_is_refused_within_bounded_time_and_memory(name: str, tmp_path: Path) -> None:
    """Under a 2 s CPU and 200 MB limit (the process is killed past either)."""
    path = tmp_path / name
    path.write_bytes(generated(tmp_path)[name])
    result = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert LOCATED.match(result.stdout)


def test_five_million_items_are_refused_within_bounds(tmp_path: Path) -> None:
    path = tmp_path / "five-million.yaml"
    with path.open("w") as handle:
        handle.write("name: x\nitems: [")
        handle.write("1," * 5_000_000)
        handle.write("1]\n")
    result = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "at most" in result.stdout, result.stderr[-2000:]


def test_the_cli_exits_2_without_a_traceback_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(generated(tmp_path)["latin1.yaml"])
    result = subprocess.run(
        [sys.executable, "-m", "compressor.cli", "run", str(path), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert LOCATED.match(result.stderr.strip()) and len(result.stderr.strip().splitlines()) == 1
