"""Detection losses of a PAA head given an assignment (METHOD.md section 1).

Shapes: N images, A anchors, C classes, M GT slots. Every term is a sum over the
batch divided by a batch-level count, so the loss of a batch does not depend on
how its images are split across processes once `num_pos` is averaged.
"""
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .assign.targets import Targets
from .boxes import aligned_iou
from .model import coder

BOX_WEIGHTINGS = ("iou", "mean")


@dataclass(frozen=True)
class LossWeights:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box: float = 1.3
    iou: float = 0.5
    # "iou": GIoU weighted by the IoU of the predicted box (PAA); "mean": plain mean (reference LAD head).
    box_weighting: str = "iou"


def detection_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    iou_logits: Tensor,
    anchors: Tensor,
    matched_idxs: Tensor,
    targets: Targets,
    weights: LossWeights = LossWeights(),
    num_pos: Tensor | None = None,
) -> dict[str, Tensor]:
    """loss_cls, loss_box, loss_iou (scalars, float32) of one network on one assignment.

    cls_logits (N, A, C), box_deltas (N, A, 4), iou_logits (N, A), anchors (A, 4),
    matched_idxs (N, A) int64 (GT index, -1 background, -2 ignore). `num_pos` overrides
    the batch's positive count (the mean over processes under DDP).
    """
    n = cls_logits.shape[0]
    positive = matched_idxs >= 0
    gt = matched_idxs.clamp(min=0)
    pos_labels = torch.gather(targets.labels, 1, gt)[positive]
    if num_pos is None:
        num_pos = positive.sum().float()

    cls_target = torch.zeros_like(cls_logits, dtype=torch.float32)
    cls_target[positive] = torch.nn.functional.one_hot(pos_labels, cls_logits.shape[-1]).float()
    cls_loss = sigmoid_focal_loss(cls_logits.float(), cls_target, weights.focal_alpha, weights.focal_gamma)
    cls_loss = (cls_loss.sum(-1) * (matched_idxs != -2)).sum() / num_pos.clamp(min=n)

    pos_boxes = coder.decode(anchors.expand(n, -1, -1)[positive], box_deltas[positive].float())
    gt_boxes = torch.gather(targets.boxes.float(), 1, gt[..., None].expand(-1, -1, 4))[positive]
    iou_target = aligned_iou(pos_boxes.detach(), gt_boxes)
    giou = generalized_box_iou_loss(pos_boxes, gt_boxes, reduction="none")
    if weights.box_weighting == "iou":
        box_loss = (giou * iou_target).sum() / iou_target.sum().clamp(min=1e-6)
    else:
        box_loss = giou.sum() / num_pos.clamp(min=1.0)
    iou_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        iou_logits[positive].float(), iou_target, reduction="sum"
    ) / num_pos.clamp(min=1.0)
    return {"loss_cls": cls_loss, "loss_box": weights.box * box_loss, "loss_iou": weights.iou * iou_loss}
