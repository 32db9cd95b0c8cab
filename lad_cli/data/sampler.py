"""Seeded batches of (image, view) keys, one padded shape per batch.

Per epoch, every image gets one view (drawn from the seed and the epoch), images are
grouped by the padded shape of their view, shuffled within the group, cut into
batches, and the batches shuffled. So a batch never mixes shapes (no extra padding,
one anchor set per batch), the plan is a pure function of (seed, epoch), and a run
can resume mid-epoch by skipping the batches already done.

Under N processes the plan is the same global plan on every process and each process
takes its contiguous share of every batch (`--batch` counts images over all processes),
so N processes see the batches one process would. A batch of fewer than N images (the
tail of a rare padded shape) is skipped, since some process would have none.
"""
from collections import defaultdict

import numpy as np
import torch


class ViewBatchSampler(torch.utils.data.Sampler):
    def __init__(self, shapes: list[list[tuple[int, int]]], batch_size: int, seed: int, shuffle: bool = True,
                 subset: list[int] | None = None, rank: int = 0, world: int = 1):
        """shapes[i][v]: padded shape of image i in view v; subset: the images to use (default all);
        rank, world: this process's share of each batch."""
        self.shapes = shapes
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.subset = list(range(len(shapes))) if subset is None else list(subset)
        self.rank, self.world = rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Plan epoch `epoch`, skipping its first `start` batches (resume)."""
        self.epoch, self.start = epoch, start

    def plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, epoch])
        num_views = np.array([len(self.shapes[i]) for i in self.subset])
        views = (rng.random(len(self.subset)) * num_views).astype(np.int64) if self.shuffle else np.zeros(len(self.subset), np.int64)
        groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for i, v in zip(self.subset, views.tolist()):
            groups[self.shapes[i][v]].append((i, v))
        batches = []
        for shape in sorted(groups):
            keys = groups[shape]
            if self.shuffle:
                keys = [keys[j] for j in rng.permutation(len(keys))]
            batches += [keys[j:j + self.batch_size] for j in range(0, len(keys), self.batch_size)]
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def local_plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This process's share of each batch of the epoch's plan."""
        if self.world == 1:
            return self.plan(epoch)
        shares = []
        for batch in self.plan(epoch):
            if len(batch) >= self.world:
                bounds = np.linspace(0, len(batch), self.world + 1).round().astype(int)
                shares.append(batch[bounds[self.rank]:bounds[self.rank + 1]])
        return shares

    def __iter__(self):
        yield from self.local_plan(self.epoch)[self.start:]

    def __len__(self) -> int:
        return len(self.local_plan(self.epoch)) - self.start
