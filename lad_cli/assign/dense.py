"""Dense per-(image, GT, anchor) helpers shared by the task-aligned and ATSS assigners.

Shapes: N images, M GT slots, A anchors. Everything is a masked tensor op: no Python loop
over GTs, no host sync, the same result on every device (ties are broken by index, never
left to `topk`'s unspecified order).
"""
import torch
from torch import Tensor

from ..structures import BACKGROUND, Targets


def topk_mask(values: Tensor, k: int) -> Tensor:
    """The k largest entries of each row: (..., A) -> (..., A) bool; ties at the k-th value
    go to the lower index. k is capped at A."""
    k = min(k, values.shape[-1])
    kth = values.topk(k, dim=-1).values[..., -1:]
    above = values > kth
    tied = values == kth
    return above | (tied & (tied.cumsum(-1) <= k - above.sum(-1, keepdim=True)))


def centres_inside(anchors: Tensor, boxes: Tensor, margin: float) -> Tensor:
    """Whether each anchor centre lies inside each box with every side's distance > margin
    (mmdetection's `is_in_gts`): anchors (A, 4), boxes (N, M, 4) -> (N, M, A) bool."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2.0
    cy = (anchors[:, 1] + anchors[:, 3]) / 2.0
    b = boxes[..., None, :]
    # min(sides) > margin, as four boolean tests: no (N, M, A, 4) float temporary
    return (cx - b[..., 0] > margin) & (cy - b[..., 1] > margin) & (b[..., 2] - cx > margin) & (b[..., 3] - cy > margin)


def highest_iou_gt(positive: Tensor, iou: Tensor) -> Tensor:
    """matched_idxs from per-GT positives: an anchor positive for several GTs goes to the one
    of highest IoU (ties: the lower GT index); no GT: BACKGROUND. (N, M, A) x2 -> (N, A) int64."""
    masked = torch.where(positive, iou, -torch.inf)
    best = masked.amax(1, keepdim=True)
    m = positive.shape[1]
    gt_index = torch.arange(m, device=positive.device)[None, :, None]
    first = torch.where(positive & (masked == best), gt_index, m).amin(1)
    return torch.where(first < m, first, BACKGROUND)


def gt_valid(targets: Targets) -> Tensor:
    """(N, M, 1) bool: the real GT slots, to broadcast over anchors."""
    return targets.valid[..., None]
