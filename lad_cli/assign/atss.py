"""ATSS assignment (Zhang et al., CVPR 2020): the static assigner of TAL's warm-up epochs
(docs/method.md, "ATSS warm-up"), batched over images and GTs. It looks at the anchors and
the GT only, never at predictions.

Shapes: N images, A anchors, M GT slots, L levels. Returns matched_idxs (N, A) int64.
"""
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..model.boxes import pairwise_iou
from ..structures import BACKGROUND, Targets
from .dense import centres_inside, gt_valid, highest_iou_gt, topk_mask
from .paa import mark_crowd_ignored


@dataclass(frozen=True)
class ATSSParams:
    topk: int = 9  # candidates per GT and level, by centre distance
    centre_margin: float = 0.01
    crowd_iof: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def atss_assign(anchors: Tensor, num_per_level: list[int], targets: Targets, params: ATSSParams = ATSSParams()) -> Tensor:
    """Per GT and level the topk anchors whose centres are closest to the GT's centre (ties:
    lower index); of those, the ones with IoU >= mean + std (unbiased) of the candidates' IoUs
    and centre inside the GT are positives; an anchor claimed twice goes to the higher IoU."""
    n = targets.labels.shape[0]
    if targets.labels.shape[1] == 0:
        background = torch.full((n, anchors.shape[0]), BACKGROUND, dtype=torch.int64, device=anchors.device)
        return mark_crowd_ignored(background, anchors, targets, params)
    boxes = targets.boxes.float()
    iou = pairwise_iou(boxes, anchors)  # (N, M, A)
    gt_centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0
    anchor_centre = (anchors[:, :2] + anchors[:, 2:]) / 2.0
    distance = (anchor_centre[None, None] - gt_centre[..., None, :]).pow(2).sum(-1).sqrt()  # (N, M, A)
    candidate = torch.cat([topk_mask(-level, params.topk) for level in distance.split(num_per_level, dim=-1)], -1)
    count = candidate.sum(-1, keepdim=True)
    mean = torch.where(candidate, iou, 0.0).sum(-1, keepdim=True) / count
    std = (torch.where(candidate, (iou - mean) ** 2, 0.0).sum(-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    positive = candidate & (iou >= mean + std) & gt_valid(targets) & centres_inside(anchors, boxes, params.centre_margin)
    return mark_crowd_ignored(highest_iou_gt(positive, iou), anchors, targets, params)
