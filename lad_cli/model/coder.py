"""Delta-xywh box coder (means 0, stds 0.1, 0.1, 0.2, 0.2), as in the PAA reference."""
import math

import torch
from torch import Tensor

STDS = (0.1, 0.1, 0.2, 0.2)
# Caps exp(dw) so that an untrained head cannot produce inf boxes (the reference's max_ratio).
MAX_LOG_RATIO = abs(math.log(16.0 / 1000))


def decode(anchors: Tensor, deltas: Tensor) -> Tensor:
    """Boxes from regression deltas: (..., 4) x (..., 4) -> (..., 4), same dtype as deltas."""
    # Scalars, not a tensor of STDS: building one on CUDA would copy from the host every call.
    sx, sy, sw, sh = STDS
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dw = (deltas[..., 2] * sw).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    dh = (deltas[..., 3] * sh).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    cx = ax + aw * (deltas[..., 0] * sx)
    cy = ay + ah * (deltas[..., 1] * sy)
    w = aw * dw.exp()
    h = ah * dh.exp()
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
