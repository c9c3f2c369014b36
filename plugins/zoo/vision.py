"""Image data and models from torchvision: datasets ``imagefolder`` and ``cifar10``, model
``torchvision`` (any classification architecture ``torchvision.models.get_model`` knows).

torchvision is an optional extra (``pip install 'compressor[vision]'``): it is imported only when
one of these is used, so the core and every other plugin work without it, and a run that needs
it stops with one line naming the package. Nothing is ever downloaded: datasets read local
folders, models start from random weights or a local state-dict file.

Transforms are named in the recipe (``[random_crop: {size: 32, padding: 4}, hflip, normalize:
cifar10]``) and checked when the recipe loads, so a typo is a located error, not a crash in a
DataLoader worker. Conversion to a tensor is implicit (before ``normalize``, else last). Random
transforms draw from torch's generator only, which the built-in loop seeds per (seed, epoch,
sample): augmented pixels are reproducible, and a resumed run sees the same ones.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from torch import nn
from torch.utils.data import Dataset

from compressor.plugin_api import (
    CompressorError,
    ConfigError,
    Data,
    DataInfo,
    DatasetBuilder,
    DatasetConfig,
    ModelBuilder,
    TypeConfig,
    hookimpl,
)

INSTALL = (
    "pip install 'compressor[vision]' (a torchvision built for your torch), "
    "or bash scripts/setup.sh --vision for a venv with a matched pair"
)


def torchvision_module(what: str) -> ModuleType:
    """torchvision, or a clean error: missing, or built for another torch (its C++ operators
    fail to register, e.g. ``operator torchvision::nms does not exist``)."""
    try:
        import torchvision
    except ImportError:
        raise CompressorError(
            f"{what} needs torchvision, which is not installed: {INSTALL}"
        ) from None
    except Exception as exc:  # a build for another torch raises RuntimeError, or others
        raise CompressorError(
            f"{what} needs torchvision, which failed to import ({type(exc).__name__}: {exc}); "
            f"it must match torch {torch.__version__}: {INSTALL}"
        ) from None
    return torchvision


def torchvision_or_none() -> ModuleType | None:
    try:
        import torchvision
    except Exception:  # missing or broken: whoever builds says which, via torchvision_module
        return None
    return torchvision


def close_matches(word: str, options: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, options, n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


# -- transforms by name ---------------------------------------------------------------------

NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # the training set's per-channel statistics (not the often-copied 0.2023/0.1994/0.2010)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class Args(BaseModel):
    """Arguments of one transform; a bare value sets ``primary``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    primary: ClassVar[str] = "size"


class SizeArgs(Args):
    size: int | None = Field(None, gt=0, description="pixels; default: image_size")


class CropArgs(SizeArgs):
    padding: int = Field(0, ge=0)


class ResizedCropArgs(SizeArgs):
    scale: tuple[float, float] = (0.08, 1.0)


class FlipArgs(Args):
    primary: ClassVar[str] = "p"
    p: float = Field(0.5, ge=0, le=1)


class JitterArgs(Args):
    primary: ClassVar[str] = "strength"
    strength: float = Field(0.4, ge=0, description="brightness, contrast and saturation")


class NormalizeArgs(Args):
    primary: ClassVar[str] = "stats"
    stats: Literal["imagenet", "cifar10"] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> NormalizeArgs:
        if self.stats is not None and (self.mean or self.std):
            raise ValueError("give a name (imagenet, cifar10) or mean: and std:, not both")
        if self.stats is None and (self.mean is None or self.std is None):
            raise ValueError("needs imagenet, cifar10, or {mean: [...], std: [...]}")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                raise ValueError("mean and std need one value per channel each")
            if min(self.std) <= 0:
                raise ValueError("std must be positive")
        return self

    def values(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.stats is not None:
            return NORMALIZE[self.stats]
        assert self.mean is not None and self.std is not None
        return self.mean, self.std


TRANSFORMS: dict[str, type[Args]] = {
    "random_resized_crop": ResizedCropArgs,
    "resize": SizeArgs,
    "center_crop": SizeArgs,
    "random_crop": CropArgs,
    "hflip": FlipArgs,
    "color_jitter": JitterArgs,
    "normalize": NormalizeArgs,
}


def parse_transform(item: str | dict[str, Any]) -> tuple[str, Args]:
    """``"hflip"`` or ``{"random_crop": {"size": 32, "padding": 4}}`` -> (name, arguments)."""
    if isinstance(item, str):
        name, value = item, None
    elif len(item) == 1:
        ((name, value),) = item.items()
    else:
        raise ValueError(f"a transform is a name or a one-key mapping, got keys {sorted(item)}")
    if name not in TRANSFORMS:
        known = ", ".join(TRANSFORMS)
        raise ValueError(
            f"unknown transform '{name}'{close_matches(name, list(TRANSFORMS))}; known: {known}"
        )
    args = TRANSFORMS[name]
    if name == "normalize" and (value is None or isinstance(value, str) and value not in NORMALIZE):
        hint = close_matches(value, list(NORMALIZE)) if value else ""
        raise ValueError(
            f"normalize needs {', '.join(NORMALIZE)} or {{mean: [...], std: [...]}}"
            + (f", got '{value}'{hint}" if value else "")
        )
    data = {} if value is None else value if isinstance(value, dict) else {args.primary: value}
    try:
        return name, args.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ValueError(f"{name}: {problems}") from None


def check_transform(item: str | dict[str, Any]) -> str | dict[str, Any]:
    parse_transform(item)
    return item


def check_preset(name: str) -> str:
    if name != "standard":
        raise ValueError(
            f"unknown preset '{name}'{close_matches(name, ['standard'])}: "
            "give 'standard' or a list of transforms"
        )
    return name


Transform = Annotated[str | dict[str, Any], AfterValidator(check_transform)]
Transforms = Annotated[
    Annotated[str, AfterValidator(check_preset), Tag("preset")]
    | Annotated[list[Transform], Tag("list")],
    Discriminator(lambda value: "preset" if isinstance(value, str) else "list"),
]
"""``standard`` (the dataset's preset) or a list of transforms by name; the discriminator
keeps a bad list item from also reporting "not a string"."""


RANDOM = {"random_resized_crop", "random_crop", "hflip", "color_jitter"}
"""Transforms that draw random numbers: a dataset with one is loaded under per-sample seeds."""


def normalize_values(
    args: NormalizeArgs, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``normalize``'s mean and std for images of ``channels`` channels: a named set's three
    values averaged into one for grayscale images."""
    mean, std = args.values()
    if channels == 1 and args.stats is not None:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean, std


def build_transform(
    items: list[str | dict[str, Any]], image_size: int, channels: int = 3
) -> Callable[[Any], Any]:
    """A torchvision ``Compose`` of the named transforms, ToTensor before ``normalize``."""
    T = torchvision_module("transforms").transforms
    steps: list[Any] = []
    tensor = False
    for item in items:
        name, args = parse_transform(item)
        size = getattr(args, "size", None) or image_size
        if name == "normalize":
            if not tensor:
                steps.append(T.ToTensor())
                tensor = True
            assert isinstance(args, NormalizeArgs)
            mean, std = normalize_values(args, channels)
            steps.append(T.Normalize(list(mean), list(std)))
        elif name == "random_resized_crop":
            assert isinstance(args, ResizedCropArgs)
            steps.append(T.RandomResizedCrop(size, scale=args.scale))
        elif name == "resize":
            steps.append(T.Resize(size))
        elif name == "center_crop":
            steps.append(T.CenterCrop(size))
        elif name == "random_crop":
            assert isinstance(args, CropArgs)
            steps.append(T.RandomCrop(size, padding=args.padding))
        elif name == "hflip":
            assert isinstance(args, FlipArgs)
            steps.append(T.RandomHorizontalFlip(args.p))
        elif name == "color_jitter":
            assert isinstance(args, JitterArgs)
            s = args.strength
            steps.append(T.ColorJitter(brightness=s, contrast=s, saturation=s))
    if not tensor:
        steps.append(T.ToTensor())
    return T.Compose(steps)  # type: ignore[no-any-return]


class Transformed(Dataset[Any]):
    """``(image, label)`` samples of ``base`` with ``transform`` applied to the image: one scan
    or load of the files serves training (augmented) and calibration (test transforms)."""

    def __init__(self, base: Any, transform: Callable[[Any], Any]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[index]
        return self.transform(image), label


class VisionConfig(DatasetConfig):
    image_size: int = Field(224, gt=0, description="side of the square images the model sees")
    train_transforms: Transforms = "standard"
    test_transforms: Transforms = "standard"


class VisionDataset(DatasetBuilder):
    """Shared by the image datasets: presets, transforms, and ``Data`` with calibration."""

    default_task = "classification"
    presets: ClassVar[dict[str, Callable[[int], list[str | dict[str, Any]]]]] = {}

    def transform(self, which: str) -> Callable[[Any], Any]:
        return build_transform(self.transform_items(which), self.config.image_size, self.channels())

    def transform_items(self, which: str) -> list[str | dict[str, Any]]:
        spec = getattr(self.config, f"{which}_transforms")
        items: list[str | dict[str, Any]] = (
            self.presets[which](self.config.image_size) if isinstance(spec, str) else spec
        )
        return items

    def info(self) -> DataInfo:
        size = self.config.image_size
        return DataInfo((self.channels(), size, size), self.num_classes())

    def channels(self) -> int:
        """Channels of the images the model sees (3: RGB)."""
        return 3

    def num_classes(self) -> int:
        raise NotImplementedError

    def data(self, train: Any, test: Any) -> Data:
        test_transform = self.transform("test")
        return Data(
            train=Transformed(train, self.transform("train")),
            test=Transformed(test, test_transform),
            info=self.info(),
            calibration=Transformed(train, test_transform),
            random=any(
                parse_transform(item)[0] in RANDOM for item in self.transform_items("train")
            ),
        )


# -- imagefolder ----------------------------------------------------------------------------


def imagenet_train(size: int) -> list[str | dict[str, Any]]:
    return [{"random_resized_crop": size}, "hflip", {"normalize": "imagenet"}]


def imagenet_test(size: int) -> list[str | dict[str, Any]]:
    # resize to 256/224 of the crop first, as the ImageNet references do
    return [
        {"resize": math.floor(size * 256 / 224)},
        {"center_crop": size},
        {"normalize": "imagenet"},
    ]


class ImageLoader:
    """Opens an image file as ``mode`` (``"RGB"`` or ``"L"``, grayscale); a class, not a
    closure, so loader workers can pickle it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Any:
        from PIL import Image

        with open(path, "rb") as f:
            return Image.open(f).convert(self.mode)


class ImageFolderDataset(VisionDataset):
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (or explicit ``train:`` and
    ``val:`` folders) through torchvision's ImageFolder. Shapes and sizes come from listing the
    files, so validating a recipe never decodes an image."""

    class Config(VisionConfig):
        name: Literal["imagefolder"]
        root: Path | None = Field(None, description="a folder holding train/ and val/")
        train: Path | None = Field(None, description="training folder (relative: under root)")
        val: Path | None = Field(None, description="test folder (relative: under root)")
        channels: Literal[1, 3] = Field(
            3, description="3: every image read as RGB (gray ones repeated); 1: as grayscale"
        )

        @model_validator(mode="after")
        def _folders(self) -> Any:
            if self.root is None and (self.train is None or self.val is None):
                raise ValueError("give root: (a folder with train/ and val/) or train: and val:")
            for spec in (self.train_transforms, self.test_transforms):
                for item in [] if isinstance(spec, str) else spec:
                    args = parse_transform(item)[1]
                    given = args.mean if isinstance(args, NormalizeArgs) else None
                    if given is not None and len(given) != self.channels:
                        raise ValueError(
                            f"normalize gives {len(given)} values per channel for images "
                            f"of {self.channels} channel(s) (channels: {self.channels})"
                        )
            return self

    presets = {"train": imagenet_train, "test": imagenet_test}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._scanned: dict[str, Any] = {}

    def channels(self) -> int:
        return int(self.config.channels)

    def folder(self, which: str) -> Path:
        c = self.config
        given = c.train if which == "train" else c.val
        default = Path("train" if which == "train" else "val")
        if c.root is None:
            return self.local_path(given, which)
        return self.local_path(c.root, "root") / (given or default)

    def scan(self, which: str) -> Any:
        """torchvision's ImageFolder over one folder, without transforms: lists the files."""
        if which not in self._scanned:
            tv = torchvision_module("dataset 'imagefolder'")
            path = self.folder(which)
            if not path.is_dir():
                raise CompressorError(
                    f"imagefolder: {path} is not a folder (expected {path}/<class>/<image>; "
                    "set data.root to a folder with train/ and val/, or data.train and data.val)"
                )
            try:
                loader = ImageLoader("L" if self.channels() == 1 else "RGB")
                self._scanned[which] = tv.datasets.ImageFolder(os.fspath(path), loader=loader)
            except (FileNotFoundError, OSError) as exc:
                raise CompressorError(f"imagefolder: {exc}") from None
        return self._scanned[which]

    def num_classes(self) -> int:
        return len(self.scan("train").classes)

    def train_size(self) -> int:
        return len(self.scan("train"))

    def build(self) -> Data:
        train, test = self.scan("train"), self.scan("val")
        if train.classes != test.classes:
            only = sorted(set(train.classes) ^ set(test.classes))
            raise CompressorError(
                f"imagefolder: {self.folder('train')} and {self.folder('val')} have different "
                f"classes (in one only: {', '.join(only[:5])}{', ...' if len(only) > 5 else ''})"
            )
        return self.data(train, test)


# -- cifar10 --------------------------------------------------------------------------------

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


def cifar_train(size: int) -> list[str | dict[str, Any]]:
    return [{"random_crop": {"size": size, "padding": 4}}, "hflip", {"normalize": "cifar10"}]


def cifar_test(size: int) -> list[str | dict[str, Any]]:
    return [{"normalize": "cifar10"}]


class CIFAR10Dataset(VisionDataset):
    """CIFAR-10's python version (``cifar-10-batches-py/``, as ``cifar-10-python.tar.gz``
    extracts) read by torchvision's CIFAR10, which keeps all 60k images in memory."""

    class Config(VisionConfig):
        name: Literal["cifar10"]
        root: Path = Field(description=f"the folder holding {CIFAR_FOLDER}/ (or that folder)")
        image_size: int = Field(32, gt=0)
        verify: bool = Field(True, description="check the files' MD5 sums of the official release")

    presets = {"train": cifar_train, "test": cifar_test}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._loaded: dict[bool, Any] = {}

    def root(self) -> Path:
        root = Path(self.config.root)
        return root.parent if root.name == CIFAR_FOLDER else root

    def load(self, train: bool) -> Any:
        if train not in self._loaded:
            folder = self.root() / CIFAR_FOLDER
            missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
            if missing:
                raise CompressorError(
                    f"cifar10: no CIFAR-10 at {folder} (missing {', '.join(missing)}); nothing is "
                    f"downloaded: extract cifar-10-python.tar.gz so that {folder} holds "
                    f"{', '.join(CIFAR_FILES)}"
                )
            tv = torchvision_module("dataset 'cifar10'")
            cls = tv.datasets.CIFAR10 if self.config.verify else unverified(tv.datasets.CIFAR10)
            try:
                self._loaded[train] = cls(os.fspath(self.root()), train=train, download=False)
            except RuntimeError as exc:
                raise CompressorError(
                    f"cifar10: {folder}: {exc} (MD5 sums differ from the official release; "
                    "set data.verify: false for a re-packed copy)"
                ) from None
        return self._loaded[train]

    def num_classes(self) -> int:
        return 10

    def train_size(self) -> int:
        return len(self.load(True))

    def build(self) -> Data:
        return self.data(self.load(True), self.load(False))


def unverified(cifar: type) -> type:
    """torchvision's CIFAR10 that checks only that its files exist (MD5 ``None``)."""
    return type(
        "UnverifiedCIFAR10",
        (cifar,),
        {
            "train_list": [[name, None] for name, _ in cifar.train_list],  # type: ignore[attr-defined]
            "test_list": [[name, None] for name, _ in cifar.test_list],  # type: ignore[attr-defined]
            "meta": {**cifar.meta, "md5": None},  # type: ignore[attr-defined]
        },
    )


# -- torchvision models ---------------------------------------------------------------------


def classification_models(tv: ModuleType) -> list[str]:
    """Names ``get_model`` builds as classifiers (not detection, segmentation, video, ...)."""
    return sorted(tv.models.list_models(module=tv.models))


class TorchvisionModel(ModelBuilder):
    """A torchvision classifier with ``num_classes`` from the data, from random weights or a
    local state dict (``weights``); torchvision's pretrained weights would be downloaded, so
    they are never asked for."""

    class Config(TypeConfig):
        name: Literal["torchvision"]
        arch: str = Field(description="resnet18, resnet50, mobilenet_v3_small, vit_b_16, ...")
        weights: Path | None = Field(None, description="a local state-dict file to start from")
        options: dict[str, Any] = Field(
            default_factory=dict, description="more keyword arguments of the model's builder"
        )

        @field_validator("arch")
        @classmethod
        def _known(cls, arch: str) -> str:
            tv = torchvision_or_none()  # without it, building says what to install
            if tv is not None:
                names = classification_models(tv)
                if arch not in names:
                    raise ValueError(
                        f"unknown torchvision model '{arch}'{close_matches(arch, names)}; "
                        "torchvision.models.list_models(module=torchvision.models) lists them"
                    )
            return arch

        @field_validator("options")
        @classmethod
        def _no_owned_keys(cls, options: dict[str, Any]) -> dict[str, Any]:
            if "num_classes" in options:
                raise ValueError("num_classes comes from the data; leave it out of options")
            if "weights" in options:
                raise ValueError(
                    "torchvision weights are downloaded; give a local file in weights:"
                )
            return options

    def build(self, info: DataInfo) -> nn.Module:
        c = self.config
        tv = torchvision_module(f"model 'torchvision' ({c.arch})")
        kwargs = {"num_classes": info.num_classes, **c.options}
        if c.arch.startswith("vit_") and "image_size" not in kwargs:
            height, width = info.input_shape[-2:]
            if height != width:
                raise ConfigError(f"{c.arch} needs square images, got {height}x{width}", ("arch",))
            kwargs["image_size"] = height
        try:
            model: nn.Module = tv.models.get_model(c.arch, weights=None, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"torchvision {c.arch}: {exc}", ("options",)) from None
        if c.weights is not None:
            load_weights(model, Path(c.weights))
        # read by the channel operator to trace the dependency graph
        model.example_input_shape = tuple(info.input_shape)  # type: ignore[assignment]
        return model


def load_weights(model: nn.Module, path: Path) -> None:
    """A state dict (or a checkpoint holding one under ``model`` / ``state_dict``), loaded
    with ``weights_only=True`` so a file cannot run code."""
    if not path.is_file():
        raise CompressorError(f"model weights: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CompressorError(f"model weights: cannot load {path}: {exc}") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise CompressorError(f"model weights: {path} does not fit the model: {exc}") from None


@hookimpl
def register_datasets(register: Any) -> None:
    register(ImageFolderDataset)
    register(CIFAR10Dataset)


@hookimpl
def register_models(register: Any) -> None:
    register(TorchvisionModel)
