"""``compressor compress MODEL RECIPE``: a local Hugging Face folder compressed post-training,
its perplexity before and after, the export plain transformers loads, and bad input refused
(one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from compressor.cli.main import main

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
from tests.support.llama import tiny_llama  # noqa: E402

torch.set_num_threads(1)

SPARSEGPT = """name: sgpt
modifiers:
  - {type: oneshot, sparsity: 0.5, operator: {kind: sparsegpt, calibration: {sequential: block}}}
"""
GPTQ = """name: gptq4
modifiers:
  - type: oneshot
    operator: {kind: gptq, bits: 4, group_size: 32, grid: compressed-tensors}
"""
WINDOWS = ["--samples", "4", "--seq-len", "32", "--eval-samples", "3"]


def llama_folder(folder: Path, vocab: int = 256, layers: int = 2) -> Path:
    """A random-init byte-level Llama saved as a Hugging Face folder (no tokenizer)."""
    model = tiny_llama(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers
    )
    model.save_pretrained(folder)
    return folder


def text_file(path: Path, size: int = 2000) -> Path:
    generator = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(97, 123, (size,), generator=generator).tolist()))
    return path


def held_out(text: Path, length: int, count: int, seed: int = 0) -> torch.Tensor:
    """The held-out windows as the command documents them: the first ``count`` of the
    non-overlapping windows in a seeded permutation."""
    ids = torch.tensor(list(text.read_bytes()))
    n = ids.numel() // length
    windows = ids[: n * length].reshape(n, length)
    return windows[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]]


def loaded_perplexity(folder: Path, windows: torch.Tensor) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(windows).logits[:, :-1].double()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    return math.exp(float(loss))


def compress(tmp_path: Path, recipe: str, *args: str, model: Path | None = None) -> int:
    (tmp_path / "recipe.yaml").write_text(recipe)
    model = model or llama_folder(tmp_path / "llama")
    text = tmp_path / "text.txt"
    if not text.exists():
        text_file(text)
    argv = [
        "compress",
        str(model),
        str(tmp_path / "recipe.yaml"),
        "--calibration",
        str(text),
        *WINDOWS,
        *args,
    ]
    return main(argv)


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


def test_sparsegpt_writes_an_hf_folder_that_reproduces_the_reported_perplexity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert compress(tmp_path, SPARSEGPT, "--out", str(out), "--format", "hf") == 0
    printed = capsys.readouterr().out
    assert "block 1/2:" in printed and "block 2/2:" in printed
    result = report(out)
    assert result["export"] == {"format": "hf", "path": "hf"}
    assert result["tokenizer"].startswith("UTF-8 bytes")
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01)
    before, after = result["perplexity"]["before"], result["perplexity"]["after"]
    assert before != after
    windows = held_out(tmp_path / "text.txt", 32, 3)
    assert loaded_perplexity(out / "hf", windows) == pytest.approx(after, rel=1e-4)
    weight = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").model.layers[0]
    assert float((weight.mlp.down_proj.weight == 0).float().mean()) == pytest.approx(0.5)


def test_gptq_on_the_compressed_tensors_grid_exports_a_folder_transformers_loads(
    tmp_path: Path,
) -> None:
    pytest.importorskip("compressed_tensors", reason="the compressed-tensors extra is missing")
    out = tmp_path / "out"
    assert compress(tmp_path, GPTQ, "--out", str(out), "--format", "compressed-tensors") == 0
    result = report(out)
    config = json.loads((out / "compressed-tensors" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    windows = held_out(tmp_path / "text.txt", 32, 3)
    after = result["perplexity"]["after"]
    assert loaded_perplexity(out / "compressed-tensors", windows) == pytest.approx(after, rel=1e-4)


def test_without_a_calibration_file_the_stdlib_sources_are_used(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(SPARSEGPT)
    out = tmp_path / "out"
    argv = ["compress", str(llama_folder(tmp_path / "llama", layers=1))]
    argv += [str(tmp_path / "recipe.yaml"), "--samples", "2", "--seq-len", "16"]
    assert main([*argv, "--eval-samples", "2", "--out", str(out)]) == 0
    result = report(out)
    assert result["calibration"]["source"] == "the Python standard library's sources"
    assert result["export"] is None and sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_the_folders_tokenizer_is_used_and_overwrite_replaces_the_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    model = tokenizer_folder(tmp_path / "model", vocab_size=320)
    assert compress(tmp_path, SPARSEGPT, "--out", str(out), "--overwrite", model=model) == 0
    assert report(out)["tokenizer"].startswith("the folder's tokenizer")
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def gpt2_with_cross_attention(folder: Path) -> Path:
    """GPT-2 whose cross-attention layers run only with encoder states: never calibrated."""
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=64, n_embd=32, n_layer=1, n_head=2, add_cross_attention=True
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def tokenizer_folder(folder: Path, vocab_size: int = 200) -> Path:
    """A Llama of ``vocab_size`` ids whose tokenizer maps a..z to ids 280..305 (with 200 ids:
    a mismatch)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    llama_folder(folder, vocab=vocab_size, layers=1)
    vocab = {"[UNK]": 0, **{chr(97 + i): 280 + i for i in range(26)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    fast.save_pretrained(folder)
    return folder


def bad_model(tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """The MODEL argument and extra arguments of each bad-input case."""
    folder = tmp_path / "model"
    if case == "no config":
        llama_folder(folder, layers=1)
        (folder / "config.json").unlink()
    elif case == "no weights":
        llama_folder(folder, layers=1)
        for path in folder.glob("*.safetensors"):
            path.unlink()
    elif case == "tokenizer mismatch":
        tokenizer_folder(folder)
    elif case == "short text":
        llama_folder(folder, layers=1)
        return folder, ["--samples", "100"]
    elif case == "never reached":
        gpt2_with_cross_attention(folder)
    elif case == "out exists":
        llama_folder(folder, layers=1)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
    return folder, []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no config", "has no config.json"),
        ("no weights", "has no weights (*.safetensors)"),
        ("tokenizer mismatch", "the tokenizer does not match the model"),
        ("short text", "100 calibration + 3 held-out windows were asked for"),
        ("never reached", "never calls the layer(s) of transformer.h.0.crossattention"),
        ("out exists", "exists: pass --overwrite to replace it"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    model, extra = bad_model(tmp_path, case)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = compress(tmp_path, SPARSEGPT, "--out", str(out), "--format", "hf", *extra, model=model)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0]
    if case == "out exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no stage left


def test_a_recipe_model_reads_bytes_and_exports_like_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = llama_folder(tmp_path / "llama", layers=1)
    model = tmp_path / "model.yaml"
    model.write_text(
        "name: m\nmodel: {name: hf, architecture: LlamaForCausalLM, config: {hidden_size: 64, "
        "intermediate_size: 128, num_hidden_layers: 1, num_attention_heads: 4, "
        f"num_key_value_heads: 2, max_position_embeddings: 64}}, weights: {weights}}}\n"
    )
    out = tmp_path / "out"
    assert compress(tmp_path, SPARSEGPT, "--out", str(out), "--format", "hf", model=model) == 0
    result = report(out)
    assert result["tokenizer"] == "UTF-8 bytes (a recipe's model)"
    windows = held_out(tmp_path / "text.txt", 32, 3)
    after = result["perplexity"]["after"]
    assert loaded_perplexity(out / "hf", windows) == pytest.approx(after, rel=1e-4)
    (tmp_path / "bad.yaml").write_text("name: m\n")
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    assert compress(tmp_path, SPARSEGPT, "--out", str(tmp_path / "o2"), model=bad) == 2
    assert "a recipe with a model: section" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
