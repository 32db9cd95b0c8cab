"""Statistics of a teacher's assignments (`lad assign` without `--cache`)."""
import numpy as np

from ..model.anchors import anchor_levels


class AssignStats:
    """Positives per GT and per pyramid level, candidates per GT, over a pass."""

    def __init__(self, levels: int):
        self.gts = 0
        self.positives = 0
        self.candidates = 0
        self.per_level = np.zeros(levels, np.int64)
        self.gts_without_positive = 0

    def add(self, matched, cand, per_level, valid) -> None:
        """matched, cand (N, A) int64 and valid (N, M) bool, on the CPU; cand None for an
        assigner without static candidates (TAL), which then reports none."""
        level = anchor_levels(per_level)
        for n in range(matched.shape[0]):
            m = int(valid[n].sum())
            pos = matched[n] >= 0
            self.gts += m
            self.positives += int(pos.sum())
            self.candidates = None if cand is None else self.candidates + int((cand[n] >= 0).sum())
            self.per_level += np.bincount(level[pos].numpy(), minlength=len(per_level))
            self.gts_without_positive += m - len(matched[n][pos].unique())

    @classmethod
    def combined(cls, parts: list["AssignStats"]) -> "AssignStats":
        """The statistics of the union of the passes (the processes' shares)."""
        total = cls(len(parts[0].per_level))
        for part in parts:
            for name in ("gts", "positives", "gts_without_positive"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.candidates = None if None in (total.candidates, part.candidates) else total.candidates + part.candidates
            total.per_level += part.per_level
        return total

    def summary(self) -> dict:
        return {"gts": self.gts, "positives_per_gt": round(self.positives / max(1, self.gts), 2),
                "candidates_per_gt": None if self.candidates is None else round(self.candidates / max(1, self.gts), 2),
                "positives_per_level": {f"P{3 + i}": int(c) for i, c in enumerate(self.per_level)},
                "gts_without_positive": self.gts_without_positive}
