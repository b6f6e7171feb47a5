"""Deterministic data order and collator randomness.

Data order is a pure function of ``(seed, epoch)``; collator randomness (masking, noise) is a
pure function of ``(seed, epoch, dataset indices of the batch)``.  Neither depends on
resumption, the number of processes or DataLoader workers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

# Evaluation batches draw collator randomness with this pseudo-epoch, so the masking of an
# eval example is the same at every evaluation and eval losses are comparable over time.
EVAL_EPOCH = 2**31 - 1


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed that is a stable function of the given non-negative integers."""
    words = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def collator_rng(seed: int, epoch: int, indices) -> np.random.Generator:
    """The generator handed to a ``needs_rng`` collator for one batch.

    It is ``np.random.default_rng(np.random.SeedSequence([seed, epoch, *indices]))`` where
    ``indices`` are the dataset indices of the batch's examples in batch order; evaluation
    batches use ``epoch = EVAL_EPOCH``.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), *(int(i) for i in indices)]))


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(num_examples)`` drawn from a generator seeded by (seed, epoch).

    Unlike ``RandomSampler`` it holds no generator state, so the order of an epoch is the same
    in an uninterrupted run, after a resume, and on every process.
    """

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True):
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: int | None = None) -> list[int]:
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return list(range(self.num_examples))
        gen = torch.Generator()
        gen.manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.num_examples, generator=gen).tolist()

    def __iter__(self):
        return iter(self.permutation())

    def __len__(self) -> int:
        return self.num_examples


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so each item travels with its index: ``(index, example)``.

    A module-level class (not a closure) so it pickles into DataLoader worker processes.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return int(index), self.dataset[index]


class IndexedCollator:
    """Unwraps ``(index, example)`` pairs and calls the user's collator.

    If the collator declares ``needs_rng = True`` it is called as
    ``collate_fn(examples, rng=collator_rng(seed, epoch, indices))``; otherwise as
    ``collate_fn(examples)``.  ``epoch`` is set by the training loop before each epoch's
    iterator is created (workers receive a copy at that moment, so persistent workers are
    not used).
    """

    def __init__(self, collate_fn: Callable, seed: int, epoch: int = 0):
        self.collate_fn = collate_fn
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.needs_rng = bool(getattr(collate_fn, "needs_rng", False))

    def __call__(self, items):
        indices = [i for i, _ in items]
        examples = [ex for _, ex in items]
        if self.needs_rng:
            return self.collate_fn(examples, rng=collator_rng(self.seed, self.epoch, indices))
        return self.collate_fn(examples)


@contextlib.contextmanager
def isolated_rng():
    """Run a block (evaluation) without disturbing the training RNG streams.

    Building an eval DataLoader iterator draws from torch's global generator, so without this
    the dropout masks after an evaluation would depend on whether evaluation ran -- and a
    resumed run would diverge from the uninterrupted one.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
