"""Anchors: one square anchor per feature-map location, side = 8 x stride.

Centres sit at ((x + 0.5) * stride, (y + 0.5) * stride), not on the grid corners as
in the reference: with a padded width that is a multiple of every stride, mirroring
the padded canvas maps the anchor grid onto itself, so a horizontal flip is an exact
permutation of anchor indices. Order: level by level (P3 first), row-major in each.
`centre_offset` 0 puts them on the corners, as mmdetection does: networks imported from
its model zoo keep the layout they were trained with (`lad import`).
"""
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from torch import Tensor


@dataclass(frozen=True)
class AnchorLayout:
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    octave_base_scale: int = 8
    centre_offset: float = 0.5

    @property
    def size_divisor(self) -> int:
        """Inputs are padded to a multiple of this, so every level's grid is exact."""
        return max(self.strides)

    def level_shapes(self, padded_hw: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = padded_hw
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"padded shape {padded_hw} is not a multiple of {self.size_divisor}")
        return [(h // s, w // s) for s in self.strides]

    def num_per_level(self, padded_hw: tuple[int, int]) -> list[int]:
        return [h * w for h, w in self.level_shapes(padded_hw)]

    def anchors(self, padded_hw: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
        """(A, 4) float32 anchors for an input of this padded shape."""
        return self.grid_anchors(self.level_shapes(padded_hw), device)

    def grid_anchors(self, level_shapes: list[tuple], device: torch.device | str = "cpu") -> Tensor:
        """(A, 4) float32 anchors of these per-level grid shapes (ints, or 0-dim tensors where
        an exported graph traces them from its input's shape)."""
        per_level = []
        for (h, w), stride in zip(level_shapes, self.strides):
            ys = (torch.arange(h, device=device, dtype=torch.float32) + self.centre_offset) * stride
            xs = (torch.arange(w, device=device, dtype=torch.float32) + self.centre_offset) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            half = 0.5 * self.octave_base_scale * stride
            per_level.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4))
        return torch.cat(per_level)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "AnchorLayout":
        return AnchorLayout(tuple(d["strides"]), d["octave_base_scale"], d["centre_offset"])


def anchor_levels(num_per_level: list[int], device: torch.device | str = "cpu") -> Tensor:
    """(A,) int64: the pyramid level (0 = P3) of every anchor, in the anchors' order.
    Cached per shape and device: the assignment asks for it every step, and building it
    on CUDA copies the counts from the host."""
    return _anchor_levels(tuple(num_per_level), str(device))


@lru_cache(maxsize=64)
def _anchor_levels(num_per_level: tuple[int, ...], device: str) -> Tensor:
    levels = torch.arange(len(num_per_level)).repeat_interleave(torch.tensor(num_per_level))
    return levels.to(device)
