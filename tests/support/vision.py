"""Tiny image data sets written on the spot (nothing is downloaded) and torchvision's status."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def torchvision_missing() -> str | None:
    """Why torchvision cannot be used here, or None when it imports."""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # a build for another torch raises RuntimeError
        return (
            f"needs torchvision ({type(exc).__name__}: {exc}); "
            "run the vision tests in .venv-vision (bash scripts/setup.sh --vision)"
        )
    return None


def write_imagefolder(
    root: Path, classes: int = 3, train: int = 12, val: int = 4, size: int = 40, gray: bool = False
) -> Path:
    """``root/{train,val}/class<k>/<i>.png``: noisy images whose mean colour is the class
    (``gray``: saved as one-channel grayscale PNGs)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            colour = np.full(3, 60.0)
            colour[k % 3] = 190.0
            for i in range(count):
                pixels = colour + rng.normal(0, 40, (size, size, 3))
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                if gray:
                    image = image.convert("L")
                image.save(folder / f"{i}.png")
    return root


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20) -> Path:
    """CIFAR-10's python layout (``cifar-10-batches-py/``) with random 32×32 images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(name: str, count: int) -> None:
        data = rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(i % 10) for i in range(count)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", test)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f)
    return root
