"""How the built-in loop reads data: batches whose order is a pure function of (seed, epoch).

Two paths, one order, one interface (:class:`BatchSource`, chosen once by
:func:`batch_source`). In-memory tensors (:class:`DataSplits`) are batched by indexing, with no
DataLoader overhead (:class:`TensorBatches`). Datasets (:class:`Data`) go through a
``DataLoader`` (workers, pinned memory, persistent workers) driven by :class:`EpochBatches`, a
batch sampler that yields the same index lists (:class:`LoaderBatches`). Either way the batches of step ``k`` depend only on the seed and ``k``, so a
resumed run reads exactly what it would have read, and a rank's share of a batch can be cut
from it (data parallelism).

Random augmentation is made a pure function of (seed, epoch, sample index) too: every sample
is loaded with torch's CPU generator seeded from those three (and restored after the batch,
so the training RNG is untouched), so resuming mid-epoch with workers reproduces the same
augmented pixels. It costs a few microseconds per sample, and nothing for datasets that say
they draw no random numbers (``Data.random = False``). :class:`StepBatches` groups the
micro-batches of each optimizer step (gradient accumulation).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from compressor.contract.data import Data, DataSplits


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def batches_per_epoch(samples: int, batch_size: int, drop_last: bool = False) -> int:
    full, rest = divmod(samples, batch_size)
    return max(1, full if drop_last and full else full + (1 if rest else 0))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch (a 63-bit mix of the three)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & (2**64 - 1)
    value ^= value >> 31
    value = (value * 0x94D049BB133111EB) & (2**64 - 1)
    return value & (2**63 - 1)


class Seeded(Dataset[Any]):
    """A dataset read with keys ``(epoch, index)``: each sample under its own torch seed
    (``random``; otherwise plainly, at the cost of a hand-written loader). The DataLoader
    fetches a whole batch through ``__getitems__``, so the training RNG is saved and restored
    once per batch, not per sample."""

    def __init__(self, dataset: Dataset[Any], seed: int, random: bool = True) -> None:
        self.dataset = dataset
        self.seed = seed
        self.random = random

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        if not self.random:
            return [self.dataset[index] for _, index in keys]
        generator = torch.default_generator  # the CPU generator transforms draw from
        state = generator.get_state()  # (torch.manual_seed would also seed every accelerator:
        try:  # 100x slower per sample)
            items = []
            for epoch, index in keys:
                generator.manual_seed(sample_seed(self.seed, epoch, index))
                items.append(self.dataset[index])
            return items
        finally:
            generator.set_state(state)


class EpochBatches:
    """A batch sampler: the index lists of one epoch from ``start`` on, keyed for
    :class:`Seeded`. Set the epoch before each pass (the loader keeps this object)."""

    def __init__(
        self,
        samples: int,
        batch_size: int,
        seed: int,
        drop_last: bool,
        rank: int = 0,
        ranks: int = 1,
    ) -> None:
        self.samples = samples
        self.batch_size = batch_size  # per rank; a step reads ranks × batch_size samples
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.ranks = rank, ranks
        self.epoch = 0
        self.start = 0
        self.stop: int | None = None

    def set_epoch(self, epoch: int, start: int = 0, stop: int | None = None) -> None:
        self.epoch, self.start, self.stop = epoch, start, stop

    def _count(self) -> int:
        return batches_per_epoch(self.samples, self.batch_size * self.ranks, self.drop_last)

    def __len__(self) -> int:
        return len(range(self.start, self.stop or self._count()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.seed, self.epoch, self.samples).tolist()
        count = self._count()
        for b in range(self.start, count if self.stop is None else min(self.stop, count)):
            chunk = rank_slice(order, b, self.batch_size, self.rank, self.ranks)
            yield [(self.epoch, index) for index in chunk]


def rank_slice(order: Any, batch: int, size: int, rank: int, ranks: int) -> Any:
    """This rank's part of global batch ``batch`` (``ranks × size`` samples of ``order``)."""
    start = batch * size * ranks + rank * size
    return order[start : start + size]


@dataclass
class LoaderSettings:
    """DataLoader settings from a recipe's ``data:`` section."""

    batch_size: int
    eval_batch_size: int
    num_workers: int = 0
    pin_memory: bool = False
    drop_last: bool = False
    persistent_workers: bool = True
    prefetch_factor: int | None = None
    in_memory: bool = True
    rank: int = 0
    ranks: int = 1

    @property
    def drops_last(self) -> bool:
        """Data parallel: a last global batch too small to split evenly is dropped."""
        return self.drop_last or self.ranks > 1

    @classmethod
    def of(cls, config: Any, rank: int = 0, ranks: int = 1) -> LoaderSettings:
        fields = {
            name: getattr(config, name)
            for name in cls.__dataclass_fields__
            if hasattr(config, name)
        }
        return cls(**{**fields, "rank": rank, "ranks": ranks})

    def loader_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            kwargs["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs


def sample_count(data: Data | DataSplits) -> int:
    """Training samples in ``data``."""
    return int(data.train_x.shape[0]) if isinstance(data, DataSplits) else _length(data.train)


def on_device(data: Data | DataSplits, device: str) -> Data | DataSplits:
    """In-memory tensors move to the run's device once; datasets are moved batch by batch."""
    return data.to(device) if isinstance(data, DataSplits) and device != "cpu" else data


class BatchSource(ABC):
    """The batches of a run: training micro-batches by (epoch, index), test batches, and
    calibration batches. :func:`batch_source` picks the implementation once, so nothing
    downstream asks what kind of data it reads."""

    def __init__(self, samples: int, settings: LoaderSettings, seed: int) -> None:
        self.samples = samples
        self.settings = settings
        self.seed = seed
        self.per_epoch = batches_per_epoch(
            samples, settings.batch_size * settings.ranks, settings.drops_last
        )

    @abstractmethod
    def train(self, epoch: int, start: int, stop: int) -> Iterator[Any]:
        """Micro-batches ``start`` to ``stop`` (exclusive) of ``epoch``."""

    @abstractmethod
    def test(self) -> Iterator[Any]:
        """The test set in order, in batches of ``eval_batch_size``."""

    @abstractmethod
    def example(self, batch: int) -> Any:
        """The first ``batch`` test samples (cycled when the test set is smaller), one batch."""

    @abstractmethod
    def _calibration_samples(self) -> int: ...

    @abstractmethod
    def _calibration_rows(self, picks: list[torch.Tensor]) -> Iterator[Any]:
        """One batch of calibration samples per index tensor in ``picks``."""

    def calibration(self, samples: int, seed: int, batches: int, batch_size: int) -> Iterator[Any]:
        """``batches`` batches of ``batch_size`` drawn (without replacement within a batch)
        from a fixed subset of ``samples`` training samples chosen with ``seed``."""
        n = self._calibration_samples()
        subset = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples]
        size = min(batch_size, subset.numel())
        draw = torch.Generator().manual_seed(seed)
        picks = [
            subset[torch.randperm(subset.numel(), generator=draw)[:size]] for _ in range(batches)
        ]
        return self._calibration_rows(picks)


class TensorBatches(BatchSource):
    """In-memory tensors, batched by indexing (no DataLoader overhead)."""

    def __init__(self, data: DataSplits, settings: LoaderSettings, seed: int) -> None:
        super().__init__(int(data.train_x.shape[0]), settings, seed)
        self.data = data
        self._order: tuple[int, torch.Tensor] | None = None

    def train(self, epoch: int, start: int, stop: int) -> Iterator[Any]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, self.samples))
        order, s = self._order[1], self.settings
        for b in range(start, stop):
            index = rank_slice(order, b, s.batch_size, s.rank, s.ranks)
            yield self.data.train_x[index], self.data.train_y[index]

    def test(self) -> Iterator[Any]:
        size = self.settings.eval_batch_size
        x, y = self.data.test_x, self.data.test_y
        for start in range(0, x.shape[0], size):
            yield x[start : start + size], y[start : start + size]

    def example(self, batch: int) -> Any:
        index = torch.arange(batch) % self.data.test_x.shape[0]
        return self.data.test_x[index], self.data.test_y[index]

    def _calibration_samples(self) -> int:
        return self.samples

    def _calibration_rows(self, picks: list[torch.Tensor]) -> Iterator[Any]:
        x, y = self.data.train_x, self.data.train_y
        for index in picks:
            yield x[index], y[index]


class LoaderBatches(BatchSource):
    """Datasets read through a ``DataLoader`` (workers, pinned memory) in the same order."""

    def __init__(self, data: Data, settings: LoaderSettings, seed: int) -> None:
        super().__init__(_length(data.train), settings, seed)
        self.data = data
        self._sampler: EpochBatches | None = None
        self._loader: DataLoader[Any] | None = None

    def train(self, epoch: int, start: int, stop: int) -> Iterator[Any]:
        loader = self._train_loader()
        assert self._sampler is not None
        self._sampler.set_epoch(epoch, start, stop)
        yield from loader

    def _train_loader(self) -> DataLoader[Any]:
        if self._loader is None:
            s = self.settings
            self._sampler = EpochBatches(
                self.samples, s.batch_size, self.seed, s.drops_last, s.rank, s.ranks
            )
            self._loader = DataLoader(
                Seeded(self.data.train, self.seed, self.data.random),
                batch_sampler=self._sampler,
                collate_fn=self.data.collate,
                **s.loader_kwargs(),
            )
        return self._loader

    def test(self) -> Iterator[Any]:
        yield from DataLoader(
            self.data.test,
            batch_size=self.settings.eval_batch_size,
            shuffle=False,
            collate_fn=self.data.collate,
            **self._once_kwargs(),
        )

    def example(self, batch: int) -> Any:
        dataset = self.data.test
        n = _length(dataset)
        items = [dataset[i % n] for i in range(batch)]
        collate = self.data.collate or torch.utils.data.default_collate
        return collate(items)

    def _calibration_samples(self) -> int:
        return _length(self.data.calibration_set())

    def _calibration_rows(self, picks: list[torch.Tensor]) -> Iterator[Any]:
        yield from DataLoader(
            self.data.calibration_set(),
            batch_sampler=[index.tolist() for index in picks],
            collate_fn=self.data.collate,
            **self._once_kwargs(),
        )

    def _once_kwargs(self) -> dict[str, Any]:
        """A loader read once: its workers need not persist."""
        return {**self.settings.loader_kwargs(), "persistent_workers": False}


def batch_source(data: Data | DataSplits, settings: LoaderSettings, seed: int) -> BatchSource:
    """Tensors are indexed unless the recipe says ``in_memory: false``; datasets are loaded."""
    if isinstance(data, DataSplits):
        if settings.in_memory:
            return TensorBatches(data, settings, seed)
        data = Data(data.train, data.test, data.info, random=False)  # tensors draw nothing
    return LoaderBatches(data, settings, seed)


class StepBatches:
    """The micro-batches of each optimizer step, read epoch by epoch from one iterator (so a
    DataLoader keeps prefetching across steps). A task's ``prepare`` (random masking, say) is
    drawn once per step from a seed of (run seed, step, micro-batch, rank), so both passes of
    SAM/CrAM see the same batch and a resumed run draws the same."""

    def __init__(
        self,
        batches: BatchSource,
        steps_per_epoch: int,
        accumulate: int,
        prepare: Callable[[Any, torch.Generator], Any] | None = None,
    ) -> None:
        self.batches = batches
        self.steps_per_epoch = steps_per_epoch
        self.accumulate = accumulate
        self.prepare = prepare
        self._epoch: int | None = None
        self._stream: Iterator[Any] = iter(())

    def of(self, step: int) -> list[Any]:
        epoch, j = divmod(step, self.steps_per_epoch)
        start = j * self.accumulate
        stop = min(start + self.accumulate, self.batches.per_epoch)
        if self._epoch != epoch or j == 0:
            self._epoch = epoch
            self._stream = iter(self.batches.train(epoch, start, self.batches.per_epoch))
        loaded = list(itertools.islice(self._stream, stop - start))
        if self.prepare is None:
            return loaded
        s = self.batches.settings
        return [
            self.prepare(
                b,
                torch.Generator().manual_seed(
                    sample_seed(self.batches.seed, step, i * s.ranks + s.rank)
                ),
            )
            for i, b in enumerate(loaded)
        ]


def _length(dataset: Dataset[Any]) -> int:
    if not isinstance(dataset, Sized):
        raise TypeError("the built-in loop needs datasets with a length (map-style datasets)")
    return len(dataset)
