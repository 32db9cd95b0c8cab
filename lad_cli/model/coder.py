"""Delta-xywh box coder (means 0, stds 0.1, 0.1, 0.2, 0.2), as in the PAA reference."""
import math

import torch
from torch import Tensor

STDS = (0.1, 0.1, 0.2, 0.2)
# Caps exp(dw) so that an untrained head cannot produce inf boxes (the reference's max_ratio).
MAX_LOG_RATIO = abs(math.log(16.0 / 1000))


def encode(anchors: Tensor, boxes: Tensor) -> Tensor:
    """Regression targets of `boxes` relative to `anchors`: (..., 4) x (..., 4) -> (..., 4)."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    bw = boxes[..., 2] - boxes[..., 0]
    bh = boxes[..., 3] - boxes[..., 1]
    bx = boxes[..., 0] + 0.5 * bw
    by = boxes[..., 1] + 0.5 * bh
    deltas = torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)], dim=-1)
    return deltas / deltas.new_tensor(STDS)


def decode(anchors: Tensor, deltas: Tensor) -> Tensor:
    """Boxes from regression deltas: (..., 4) x (..., 4) -> (..., 4), same dtype as deltas."""
    deltas = deltas * deltas.new_tensor(STDS)
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dw = deltas[..., 2].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    dh = deltas[..., 3].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    cx = ax + aw * deltas[..., 0]
    cy = ay + ah * deltas[..., 1]
    w = aw * dw.exp()
    h = ah * dh.exp()
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
