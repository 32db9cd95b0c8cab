"""Seeded batches of (image, view) keys, one padded shape per batch.

Per epoch, every image gets one view (drawn from the seed and the epoch), images are
grouped by the padded shape of their view, shuffled within the group, cut into
batches, and the batches shuffled. So a batch never mixes shapes (no extra padding,
one anchor set per batch), the plan is a pure function of (seed, epoch), and a run
can resume mid-epoch by skipping the batches already done.
"""
from collections import defaultdict

import numpy as np
import torch


class ViewBatchSampler(torch.utils.data.Sampler):
    def __init__(self, shapes: list[list[tuple[int, int]]], batch_size: int, seed: int, shuffle: bool = True,
                 subset: list[int] | None = None):
        """shapes[i][v]: padded shape of image i in view v; subset: the images to use (default all)."""
        self.shapes = shapes
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.subset = list(range(len(shapes))) if subset is None else list(subset)
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

    def __iter__(self):
        yield from self.plan(self.epoch)[self.start:]

    def __len__(self) -> int:
        return len(self.plan(self.epoch)) - self.start
