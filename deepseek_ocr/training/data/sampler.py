"""A deterministic, resumable order of sample indices, split across ranks without overlap.

Epoch e visits a permutation of `range(n)` drawn from `(seed, e)` alone, so any process can
rebuild it. `position` counts the samples of the epoch consumed by *all* ranks together; rank r
of w takes `perm[position + r]`, then the position moves on by w. Every rank therefore takes
the same number of samples per step, no index is taken twice in an epoch, and the state
(`seed`, `epoch`, `position`) does not depend on the number of ranks: a run stopped at some
position resumes there on another number of ranks. When fewer than w samples remain the epoch
ends (at most w - 1 samples of that epoch's permutation are left out; the permutation differs
per epoch, so not always the same ones).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .records import DataError


class SampleOrder:
    """Indices for one rank, epoch after epoch; `state_dict()` resumes exactly.

    Args:
        n: the number of samples.
        seed: the shuffling seed.
        epoch: the epoch to start in.
        rank, world_size: this process's share (rank r of world_size takes every
            world_size-th index of the epoch's order, starting at r).
        shuffle: False visits 0..n-1 in order every epoch (evaluation).

    Iterating yields this rank's remaining indices of the current epoch and then moves to the
    next epoch (so `for i in order:` is one epoch). The position advances as each index is
    handed out: a state taken after the sample was used resumes with the next one.
    """

    def __init__(self, n: int, *, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if n < 1:
            raise ValueError(f"SampleOrder needs at least one sample, got n={n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if n < world_size:
            raise ValueError(f"{n} sample(s) cannot give each of {world_size} ranks one")
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = int(epoch), 0
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's order (all ranks)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            if self.shuffle:
                # SeedSequence mixes (seed, epoch) into independent streams: seed 1 epoch 0 and
                # seed 0 epoch 1 do not share an order, as seed + epoch would make them.
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            else:
                perm = np.arange(self.n)
            self._cache = (epoch, perm)
        return self._cache[1]

    def steps_left(self) -> int:
        """Indices this rank still takes in the current epoch."""
        return (self.n - self.position) // self.world_size

    def __len__(self) -> int:
        """Indices per rank in a whole epoch."""
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.steps_left() == 0:  # a state saved after the epoch's last index: start the next
            self.epoch, self.position = self.epoch + 1, 0
        perm = self.permutation()
        while self.position + self.world_size <= self.n:
            index = int(perm[self.position + self.rank])
            self.position += self.world_size
            yield index
        self.epoch += 1
        self.position = 0

    def take(self, count: int) -> list[int]:
        """The next `count` indices of this rank, crossing into the next epoch when needed."""
        out: list[int] = []
        while len(out) < count:
            if self.steps_left() == 0:
                self.epoch, self.position = self.epoch + 1, 0
            perm = self.permutation()
            out.append(int(perm[self.position + self.rank]))
            self.position += self.world_size
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "shuffle": self.shuffle,
                "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken (on any number of ranks).

        Raises:
            DataError: the state was taken on another dataset size, seed or shuffle setting,
                where the same position would mean other samples.
        """
        for key in ("n", "seed", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise DataError("sampler state", f"saved with {key}={state.get(key)!r} but this run has "
                                                 f"{key}={getattr(self, key)!r}; the data changed since the checkpoint")
        position = int(state["position"])
        if not 0 <= position <= self.n:
            raise DataError("sampler state", f"position {position} outside 0..{self.n}")
        self.epoch, self.position = int(state["epoch"]), position
