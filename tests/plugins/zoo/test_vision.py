"""torchvision datasets and models (plugins/zoo/vision.py) on tiny data written in tmp_path.

All but the last test need torchvision (``.venv-vision``, from ``scripts/setup.sh --vision``)
and are skipped without it; the last one checks the message users get when it is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from compressor.cli.main import main
from compressor.contract.data import Data
from compressor.contract.errors import CompressorError, RecipeError
from compressor.host.manager import Plugins
from compressor.kit.files import load_checkpoint
from compressor.train.batches import Seeded
from compressor.train.loop import run
from tests.conftest import make_recipe
from tests.support import ROOT
from tests.support.vision import torchvision_missing, write_cifar10, write_imagefolder

MISSING = torchvision_missing()
vision = [pytest.mark.vision, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def needs_torchvision(test: Any) -> Any:
    for mark in vision:
        test = mark(test)
    return test


def recipe_text(data: str, model: str = "{name: torchvision, arch: resnet18}", **extra: str) -> str:
    text = f"version: 1\nname: vision\nmodel: {model}\ndata: {data}\n"
    text += extra.get("train", "train: {epochs: 1, seed: 0}\n")
    text += "optimizer: {name: sgd, lr: 0.01, momentum: 0.9}\n"
    return text + extra.get("modifiers", "")


def dataset(plugins: Plugins, data: str) -> Any:
    recipe = make_recipe(recipe_text(data), plugins)
    return plugins.registries.datasets.build(recipe.config.data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagefolder"))


@needs_torchvision
def test_imagefolder_info_and_size_list_files_without_decoding(
    plugins: Plugins, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import PIL.Image

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    data = dataset(plugins, f"{{name: imagefolder, root: '{folder}', image_size: 32}}")
    assert data.train_size() == 36
    info = data.info()
    assert (info.input_shape, info.num_classes) == ((3, 32, 32), 3)
    explicit = dataset(
        plugins, f"{{name: imagefolder, train: '{folder}/train', val: '{folder}/val'}}"
    )
    assert explicit.train_size() == 36
    assert explicit.info().input_shape == (3, 224, 224)


@needs_torchvision
def test_imagefolder_builds_train_test_and_calibration(plugins: Plugins, folder: Path) -> None:
    import torchvision.transforms as T

    built = dataset(plugins, f"{{name: imagefolder, root: '{folder}', image_size: 32}}").build()
    assert isinstance(built, Data)
    assert (len(built.train), len(built.test), len(built.calibration_set())) == (36, 12, 36)
    kinds = [type(t) for t in built.train.transform.transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    test = built.test.transform.transforms
    assert [type(t) for t in test] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert test[0].size == 36 and test[1].size == (32, 32)  # 32 · 256/224, rounded down
    image, label = built.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0
    assert built.test[11][1] == 2
    # calibration: training images as evaluation sees them, the same under any seed
    torch.manual_seed(1)
    first = built.calibration[5][0]
    torch.manual_seed(2)
    assert torch.equal(first, built.calibration[5][0])
    assert built.calibration.base is built.train.base  # one scan of the files for both


@needs_torchvision
def test_transforms_by_name(plugins: Plugins, folder: Path) -> None:
    import torchvision.transforms as T

    transforms = (
        "[{random_crop: {size: 24, padding: 4}}, hflip, {color_jitter: 0.2}, "
        "{normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}, {hflip: 1.0}]"
    )
    data = dataset(
        plugins,
        f"{{name: imagefolder, root: '{folder}', image_size: 24, train_transforms: {transforms},"
        " test_transforms: [{resize: 24}, center_crop]}",
    ).build()
    steps = data.train.transform.transforms
    assert [type(t) for t in steps] == [
        T.RandomCrop,
        T.RandomHorizontalFlip,
        T.ColorJitter,
        T.ToTensor,  # implicit, before normalize
        T.Normalize,
        T.RandomHorizontalFlip,
    ]
    assert (steps[0].size, steps[0].padding, steps[5].p) == ((24, 24), 4, 1.0)
    assert steps[2].brightness == (0.8, 1.2)
    assert steps[4].mean == [0.5, 0.5, 0.5]
    assert type(data.test.transform.transforms[-1]) is T.ToTensor  # no normalize: last
    assert data.test[0][0].shape == (3, 24, 24)
    assert float(data.test[0][0].min()) >= 0.0 and float(data.test[0][0].max()) <= 1.0


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        ("[hflp]", "unknown transform 'hflp' (did you mean 'hflip'?)"),
        ("[{normalize: imagenett}]", "got 'imagenett' (did you mean 'imagenet'?)"),
        ("[{random_crop: {size: 32, pad: 4}}]", "random_crop: pad: Extra inputs"),
        ("[{hflip: 2}]", "hflip: p: Input should be less than or equal to 1"),
        ("[{resize: 8, hflip: 1}]", "a transform is a name or a one-key mapping"),
        ("standrd", "unknown preset 'standrd' (did you mean 'standard'?)"),
    ],
)
def test_a_bad_transform_is_a_located_recipe_error(
    plugins: Plugins, transforms: str, message: str
) -> None:
    """Checked when the recipe loads (no torchvision needed), never in a DataLoader worker."""
    text = recipe_text(f"{{name: imagefolder, root: x,\n  train_transforms: {transforms}}}")
    with pytest.raises(RecipeError) as info:
        make_recipe(text, plugins)
    problem = str(info.value)
    assert message in problem
    assert problem.startswith("test.yaml:5:") and "data.train_transforms" in problem


@needs_torchvision
def test_augmentation_is_reproducible_under_a_torch_seed(plugins: Plugins, folder: Path) -> None:
    data = dataset(plugins, f"{{name: imagefolder, root: '{folder}', image_size: 32}}").build()
    torch.manual_seed(0)
    a = data.train[3][0]
    torch.manual_seed(0)
    assert torch.equal(a, data.train[3][0])
    torch.manual_seed(1)
    assert not torch.equal(a, data.train[3][0])
    seeded = Seeded(data.train, seed=0)  # what the built-in loop reads: seeded per (epoch, index)
    assert torch.equal(seeded[(0, 3)][0], seeded[(0, 3)][0])
    assert not torch.equal(seeded[(0, 3)][0], seeded[(1, 3)][0])


@needs_torchvision
def test_imagefolder_errors_are_clean(plugins: Plugins, folder: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="give root:"):
        make_recipe(recipe_text("{name: imagefolder, train: a}"), plugins)
    with pytest.raises(CompressorError, match="nowhere/train is not a folder"):
        dataset(plugins, f"{{name: imagefolder, root: '{tmp_path}/nowhere'}}").train_size()
    other = tmp_path / "other"
    (other / "train" / "a").mkdir(parents=True)
    (other / "train" / "a" / "x.png").write_bytes((folder / "train/class0/0.png").read_bytes())
    (other / "val" / "b").mkdir(parents=True)
    (other / "val" / "b" / "x.png").write_bytes((folder / "val/class0/0.png").read_bytes())
    with pytest.raises(CompressorError, match="different classes"):
        dataset(plugins, f"{{name: imagefolder, root: '{other}'}}").build()


@needs_torchvision
def test_torchvision_models(plugins: Plugins, tmp_path: Path) -> None:
    from compressor.contract.data import DataInfo

    def build(model: str, info: DataInfo) -> torch.nn.Module:
        recipe = make_recipe(recipe_text("{name: synthetic}", model), plugins)
        return plugins.registries.models.build(recipe.config.model).build(info)  # type: ignore[no-any-return]

    info = DataInfo((3, 32, 32), 5)
    resnet = build("{name: torchvision, arch: resnet18}", info)
    assert resnet(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    assert resnet.example_input_shape == (3, 32, 32)
    vit = build("{name: torchvision, arch: vit_b_16}", info)  # image_size from the data
    assert vit(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    small = build("{name: torchvision, arch: mobilenet_v3_small, options: {dropout: 0.0}}", info)
    assert small.classifier[2].p == 0.0

    state = {k: v + 1 if v.is_floating_point() else v for k, v in resnet.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    torch.save({"model": state}, tmp_path / "ckpt.pt")
    for file in ("w.pt", "ckpt.pt"):
        loaded = build(f"{{name: torchvision, arch: resnet18, weights: '{tmp_path / file}'}}", info)
        assert torch.equal(loaded.conv1.weight, state["conv1.weight"])
    with pytest.raises(CompressorError, match="does not fit the model"):
        build(
            f"{{name: torchvision, arch: resnet18, weights: '{tmp_path / 'w.pt'}'}}",
            DataInfo((3, 32, 32), 7),
        )
    with pytest.raises(CompressorError, match="does not exist"):
        build(f"{{name: torchvision, arch: resnet18, weights: '{tmp_path / 'no.pt'}'}}", info)

    with pytest.raises(
        RecipeError, match=r"unknown torchvision model 'resnt18' \(did you mean 'resnet18'"
    ):
        make_recipe(recipe_text("{name: synthetic}", "{name: torchvision, arch: resnt18}"), plugins)
    with pytest.raises(RecipeError, match="num_classes comes from the data"):
        make_recipe(
            recipe_text(
                "{name: synthetic}",
                "{name: torchvision, arch: resnet18, options: {num_classes: 3}}",
            ),
            plugins,
        )
    with pytest.raises(CompressorError, match="torchvision resnet18"):
        build("{name: torchvision, arch: resnet18, options: {no_such_option: 1}}", info)


GMP = "modifiers:\n  - type: gmp\n    schedule: {kind: cubic, final: 0.5, start: 0, end: 2}\n"


@needs_torchvision
def test_cli_run_resnet18_on_an_imagefolder_with_gmp(folder: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "vision.yaml"
    recipe.write_text(
        recipe_text(
            f"{{name: imagefolder, root: '{folder}', image_size: 32, batch_size: 8}}",
            train="train: {epochs: 1, max_steps: 3, seed: 0}\n",
            modifiers=GMP,
        )
    )
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "compressor.cli",
            "--threads",
            "1",
            "run",
            str(recipe),
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3
    assert report["sparsity"]["global"] == pytest.approx(0.5, abs=1e-4)
    assert 0.0 <= report["metrics"]["test_accuracy"] <= 1.0


@needs_torchvision
def test_resume_with_workers_is_bitwise_exact(
    plugins: Plugins, folder: Path, tmp_path: Path
) -> None:
    """3 steps + resume + 3 steps == 6 steps straight, with 2 DataLoader workers augmenting
    (5 steps an epoch: the split is mid-epoch and the straight run crosses an epoch)."""

    def go(out: Path, max_steps: int, resume: bool = False) -> None:
        text = recipe_text(
            f"{{name: imagefolder, root: '{folder}', image_size: 32, batch_size: 8,"
            " num_workers: 2, train_transforms: [{random_resized_crop: 32}, hflip,"
            " {color_jitter: 0.3}, {normalize: imagenet}]}",
            train=f"train: {{epochs: 2, max_steps: {max_steps}, seed: 0, eval_every: 100}}\n",
            modifiers=GMP.replace("end: 2", "end: 4"),
        )
        run(make_recipe(text, plugins), out, plugins=plugins, resume=resume, progress=False)

    go(tmp_path / "straight", 6)
    go(tmp_path / "split", 3)
    go(tmp_path / "split", 6, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["session"]["step"] == b["session"]["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["session"]["masks"].keys() == b["session"]["masks"].keys() != set()
    for key in a["session"]["masks"]:
        assert torch.equal(a["session"]["masks"][key], b["session"]["masks"][key]), key
    state_a, state_b = a["session"]["optimizer"]["state"], b["session"]["optimizer"]["state"]
    for key in state_a:
        assert torch.equal(state_a[key]["momentum_buffer"], state_b[key]["momentum_buffer"])


@needs_torchvision
def test_cifar10_reads_the_python_pickle_layout(plugins: Plugins, tmp_path: Path) -> None:
    import torchvision.transforms as T

    root = write_cifar10(tmp_path / "cifar")
    data = dataset(plugins, f"{{name: cifar10, root: '{root}', verify: false}}")
    assert data.train_size() == 100
    assert (data.info().input_shape, data.info().num_classes) == ((3, 32, 32), 10)
    built = data.build()
    assert (len(built.train), len(built.test)) == (100, 20)
    kinds = [type(t) for t in built.train.transform.transforms]
    assert kinds == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert built.train.transform.transforms[0].padding == 4
    assert [type(t) for t in built.test.transform.transforms] == [T.ToTensor, T.Normalize]
    image, label = built.test[13]
    assert image.shape == (3, 32, 32) and label == 3
    # the folder itself may be given too
    inner = dataset(
        plugins, f"{{name: cifar10, root: '{root}/cifar-10-batches-py', verify: false}}"
    )
    assert inner.train_size() == 100
    # these files are not the official release: MD5 sums differ, and the error says what to do
    with pytest.raises(CompressorError, match="verify: false"):
        dataset(plugins, f"{{name: cifar10, root: '{root}'}}").train_size()


def test_a_missing_cifar10_folder_is_a_clean_error(plugins: Plugins, tmp_path: Path) -> None:
    data = dataset(plugins, f"{{name: cifar10, root: '{tmp_path}'}}")
    with pytest.raises(CompressorError, match="nothing is downloaded") as info:
        data.build()
    assert "cifar-10-batches-py" in str(info.value) and "data_batch_1" in str(info.value)


def test_without_torchvision_the_cli_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs in any venv: ``None`` in sys.modules makes ``import torchvision`` fail as if absent."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(f"{{name: imagefolder, root: '{tmp_path}'}}", "{name: mlp}"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "dataset 'imagefolder' needs torchvision, which is not installed" in err
    assert "compressor[vision]" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "report.json").exists()


@needs_torchvision
def test_only_random_transforms_make_the_loop_seed_each_sample(
    plugins: Plugins, folder: Path
) -> None:
    """The preset (random crop, flip) draws random numbers; resize + normalize draws none,
    so the loop reads it without per-sample seeding (Data.random)."""
    augmented = dataset(plugins, f"{{name: imagefolder, root: '{folder}', image_size: 32}}")
    assert augmented.build().random is True
    fixed = dataset(
        plugins,
        f"{{name: imagefolder, root: '{folder}', image_size: 32, "
        "train_transforms: [resize, center_crop, {normalize: imagenet}]}",
    )
    assert fixed.build().random is False


@needs_torchvision
def test_grayscale_folders_are_read_as_one_channel_with_channels_1(
    plugins: Plugins, tmp_path: Path
) -> None:
    import torchvision.transforms as T

    gray = write_imagefolder(tmp_path / "gray", gray=True)
    as_rgb = dataset(plugins, f"{{name: imagefolder, root: '{gray}', image_size: 32}}")
    assert as_rgb.info().input_shape == (3, 32, 32)  # the default: gray repeated over RGB
    image = as_rgb.build().test[0][0]
    assert image.shape == (3, 32, 32)
    unnormalised = image * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    unnormalised += torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    torch.testing.assert_close(unnormalised[0], unnormalised[1], rtol=0, atol=1e-6)
    data = dataset(plugins, f"{{name: imagefolder, root: '{gray}', image_size: 32, channels: 1}}")
    assert data.info().input_shape == (1, 32, 32)
    built = data.build()
    assert built.train[0][0].shape == (1, 32, 32) and built.test[0][0].shape == (1, 32, 32)
    (normalize,) = [t for t in built.test.transform.transforms if isinstance(t, T.Normalize)]
    # imagenet's statistics averaged over the three channels
    assert normalize.mean == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    assert normalize.std == [pytest.approx((0.229 + 0.224 + 0.225) / 3)]


def test_normalize_must_give_one_value_per_channel(plugins: Plugins) -> None:
    """Checked when the recipe loads (no torchvision needed)."""
    text = recipe_text(
        "{name: imagefolder, root: x, channels: 1,\n"
        "  test_transforms: [{normalize: {mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}}]}"
    )
    with pytest.raises(RecipeError, match=r"normalize gives 3 values per channel for images of 1"):
        make_recipe(text, plugins)
    with pytest.raises(RecipeError, match="channels"):
        make_recipe(recipe_text("{name: imagefolder, root: x, channels: 2}"), plugins)
    one = "{name: imagefolder, root: x, channels: 1, test_transforms: [{normalize: {mean: [0.5], std: [0.2]}}]}"
    assert make_recipe(recipe_text(one), plugins).config.data.channels == 1
