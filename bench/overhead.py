"""Engine overhead: `compressor run` (plain SGD) versus a hand-written PyTorch loop, for both
data paths: in-memory tensors indexed directly, and the same tensors read through a DataLoader
(`in_memory: false` in the recipe; by hand, `DataLoader(TensorDataset(...))`).

Same model, data, batches, optimizer and epochs; both evaluate once at the end. Runs alternate
(engine, hand, engine, hand, ...) in one process so machine noise hits both alike; the ratio
of medians is reported with min–max. Bar: engine / hand <= 1.03 on each path.

    .venv/bin/python -m bench.overhead [--repeats 5] [--epochs 3] [--threads 1] [--paths memory loader] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.common import result_path, summary, write_payload
from compressor.host.manager import load_plugins
from compressor.recipe.schema import recipe_from_text
from compressor.train.batches import epoch_order
from compressor.train.loop import run
from compressor_plugins.zoo.datasets import MNIST1D
from compressor_plugins.zoo.models import MNIST1DCNN

RECIPE = """\
name: overhead-sgd
model: {{name: mnist1d_cnn, width: 64}}
data: {{name: mnist1d, samples: {samples}, batch_size: 128, in_memory: {in_memory}}}
train: {{epochs: {epochs}, seed: 0, eval_every: {epochs}ep, checkpoint_every: null}}
optimizer: {{name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}}
"""


def hand_written(epochs: int, samples: int, loader: bool) -> float:
    """What a user would write by hand (train, evaluate once, save); returns seconds."""
    started = time.perf_counter()
    data = MNIST1D(MNIST1D.Config(name="mnist1d", samples=samples)).build()
    torch.manual_seed(0)
    model = MNIST1DCNN(40, 10, 64)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    n, batch_size = len(data.train_x), 128
    steps = math.ceil(n / batch_size)
    dataset = TensorDataset(data.train_x, data.train_y)
    for epoch in range(epochs):
        order = epoch_order(0, epoch, n)
        model.train()
        if loader:  # the same batches, read as a user would with a DataLoader
            batches = iter(DataLoader(dataset, batch_size=batch_size, sampler=order.tolist()))
        for i in range(steps):
            if loader:
                x, y = next(batches)
            else:
                batch = order[i * batch_size : (i + 1) * batch_size]
                x, y = data.train_x[batch], data.train_y[batch]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    torch.save(model.state_dict(), Path(tempfile.mkdtemp()) / "model.pt")
    return time.perf_counter() - started


def engine(epochs: int, samples: int, plugins, loader: bool) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    text = RECIPE.format(epochs=epochs, samples=samples, in_memory=str(not loader).lower())
    recipe = recipe_from_text(text, registries=plugins.registries)
    run(recipe, Path(tempfile.mkdtemp()) / "run", plugins=plugins, progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny and fast: checks the script runs"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both loops")
    parser.add_argument(
        "--paths", nargs="+", choices=["memory", "loader"], default=["memory", "loader"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.repeats, args.epochs, args.samples = 1, 1, 500
    plugins = load_plugins(autoload=False)
    result: dict[str, object] = {
        "epochs": args.epochs, "samples": args.samples, "repeats": args.repeats,
        "threads": args.threads, "bar": 1.03,
    }  # fmt: skip
    print("| data path | loop | median s | min–max s |")
    print("|---|---|---|---|")
    lines = []
    for path in args.paths:
        loader = path == "loader"
        engine(1, args.samples, plugins, loader)  # warm-up: data cache, allocator, imports
        hand_written(1, args.samples, loader)
        times: dict[str, list[float]] = {"engine": [], "hand": []}
        for _ in range(args.repeats):
            times["engine"].append(engine(args.epochs, args.samples, plugins, loader))
            times["hand"].append(hand_written(args.epochs, args.samples, loader))
        ratios = [e / h for e, h in zip(times["engine"], times["hand"], strict=True)]
        row = {
            "engine_s": summary(times["engine"]),
            "hand_s": summary(times["hand"]),
            "ratio_of_medians": summary(times["engine"])["median"]
            / summary(times["hand"])["median"],
            "pairwise_ratio": summary(ratios),
        }
        result[path] = row
        for name in ("engine", "hand"):
            s = row[f"{name}_s"]
            label = "compressor run" if name == "engine" else "hand-written"
            print(f"| {path} | {label} | {s['median']:.2f} | {s['min']:.2f}–{s['max']:.2f} |")
        pr = row["pairwise_ratio"]
        lines.append(
            f"{path}: ratio of medians {row['ratio_of_medians']:.3f} "
            f"(pairwise {pr['median']:.3f}, {pr['min']:.3f}–{pr['max']:.3f}); bar <= 1.03"
        )
    print("\n" + "\n".join(lines))
    write_payload(result, result_path("overhead-smoke" if args.smoke else "overhead"))


if __name__ == "__main__":
    main()
