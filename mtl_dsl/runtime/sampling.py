"""Everything random in a run is a function of the run's seed and a position, through one mechanism:
``numpy.random.SeedSequence`` of ``(seed, position..., purpose)``.

* model initialisation: ``(seed, INIT)`` seeds torch, numpy and ``random`` once before the model
  is built;
* data order: the permutation of epoch ``e`` is drawn from ``(seed, e, ORDER)`` and sharded like
  ``torch.utils.data.DistributedSampler`` (rank ``r`` of ``w`` takes every ``w``-th index of the
  permutation truncated to a multiple of ``w``);
* each sample: ``(seed, e, index, SAMPLE)`` seeds the global torch/numpy/``random`` generators
  while the sample is produced, and ``(seed, e, index, AUGMENT)`` is the augmentation generator of
  the transforms, so a sample does not depend on what was loaded before it nor on the loader
  process that produced it;
* each training step: ``(seed, step, rank, STEP)`` re-seeds torch before the forward (dropout,
  drop-path, Gumbel noise), so no generator state has to be checkpointed.

A run resumed at a step therefore sees the same batches and the same noise as one never stopped.
The sampler is written here rather than subclassing ``DistributedSampler`` because that class
draws its permutation from a torch generator seeded with ``seed + epoch``: a second mechanism,
and one where runs with seeds ``s`` and ``s + 1`` share all but one epoch's order.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np

INIT, ORDER, SAMPLE, STEP = 0x1417, 0x0D3E, 0x5A3F, 0x57E9
AUGMENT = 0xA9
_MASK = (1 << 64) - 1


def seed_sequence(*keys: int) -> np.random.SeedSequence:
    """The ``SeedSequence`` of a tuple of integers (any sign: taken modulo 2**64)."""
    return np.random.SeedSequence([int(k) & _MASK for k in keys])


def derive_seed(*keys: int) -> int:
    """A 31-bit seed for generators that take one integer (torch, numpy's legacy, ``random``)."""
    return int(seed_sequence(*keys).generate_state(1, dtype=np.uint32)[0]) & 0x7FFFFFFF


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample in one epoch."""
    return np.random.default_rng(seed_sequence(seed, epoch, index, AUGMENT))


def seed_globals(seed: int) -> None:
    """Seed torch, numpy's global generator and ``random`` with one derived seed."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def seed_model_init(seed: int) -> None:
    seed_globals(derive_seed(seed, INIT))


def seed_step(seed: int, step: int, rank: int) -> None:
    import torch

    torch.manual_seed(derive_seed(seed, step, rank, STEP))


def epoch_order(seed: int, epoch: int, length: int) -> np.ndarray:
    return np.random.default_rng(seed_sequence(seed, epoch, ORDER)).permutation(length)


class ResumableSampler:
    """Yields ``(index, sample seed)`` for one rank: the shuffled shard of ``(seed, epoch)``,
    whole batches only, starting at any batch of the epoch (``set_start``)."""

    def __init__(self, length: int, world: int, rank: int, seed: int, batch_size: int):
        self.length, self.world, self.rank = int(length), int(world), int(rank)
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.num_samples = self.length // self.world  # drop_last: every rank the same count
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, batch: int) -> None:
        self.start_batch = int(batch)

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, in order (whole epoch, before ``set_start``)."""
        order = epoch_order(self.seed, self.epoch, self.length)[:self.num_samples * self.world]
        return [int(i) for i in order[self.rank::self.world]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        usable = self.batches_per_epoch() * self.batch_size
        for index in self.indices()[self.start_batch * self.batch_size:usable]:
            yield index, derive_seed(self.seed, self.epoch, index, SAMPLE)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch) * self.batch_size


class SeededSamples:
    """Dataset wrapper: item ``(index, seed)`` is produced under its own global-RNG seed (torch,
    numpy and ``random``), which are restored afterwards."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        import torch

        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed_globals(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
