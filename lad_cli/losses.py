"""Detection losses of the head given an assignment (docs/method.md, "Losses"): PAA's
(`detection_loss`) and the task-aligned one (`tal_loss`).

Shapes: N images, A anchors, C classes, M GT slots. Every term is a sum over the
batch divided by a batch-level count, so the loss of a batch does not depend on
how its images are split across processes once the counts are averaged over them.
"""
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from .choices import BOX_WEIGHTINGS
from .errors import LadError
from .model import coder
from .model.boxes import aligned_iou, pairwise_iou
from .structures import IGNORE, Targets

# The classification and box loss of the head; PAA's anchor cost is the same two terms.
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
GIOU_WEIGHT = 1.3


def _identity(t: Tensor) -> Tensor:
    return t


def giou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - GIoU of corresponding xyxy boxes: (..., 4) x (..., 4) -> (...) float32.

    torchvision's `generalized_box_iou_loss` (reduction "none") operation for operation, so
    the same bits and gradients, but dense: torchvision writes the intersection through a
    boolean mask, which on CUDA is a host sync in the forward and again in the backward;
    here `torch.where` selects it.
    """
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    overlap = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk = torch.where(overlap, (xkis2 - xkis1) * (ykis2 - ykis1), torch.zeros_like(x1))
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iouk - ((area_c - unionk) / (area_c + eps)))


@dataclass(frozen=True)
class LossWeights:
    focal_alpha: float = FOCAL_ALPHA
    focal_gamma: float = FOCAL_GAMMA
    box: float = GIOU_WEIGHT
    iou: float = 0.5
    # "iou": GIoU weighted by the IoU of the predicted box (PAA); "mean": plain mean (reference LAD head).
    box_weighting: str = "iou"

    def __post_init__(self):
        if self.box_weighting not in BOX_WEIGHTINGS:
            raise LadError(f"unknown --box-weighting {self.box_weighting!r}: use {', '.join(BOX_WEIGHTINGS)}")


def detection_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    iou_logits: Tensor,
    anchors: Tensor,
    matched_idxs: Tensor,
    targets: Targets,
    weights: LossWeights = LossWeights(),
    process_mean: Callable[[Tensor], Tensor] = _identity,
) -> dict[str, Tensor]:
    """loss_cls, loss_box, loss_iou (scalars, float32) of one network on one assignment.

    cls_logits (N, A, C), box_deltas (N, A, 4), iou_logits (N, A), anchors (A, 4),
    matched_idxs (N, A) int64 (GT index, -1 background, -2 ignore). `process_mean` maps
    the batch-level normalisers (positives, images, IoU sum) to their mean over processes
    under DDP (`lad_cli.dist.process_mean`), so the averaged gradients of N processes equal
    one process's on the whole batch.
    """
    n = cls_logits.shape[0]
    positive, gt, pred_boxes, gt_boxes, iou_target = _matched_boxes(box_deltas, anchors, matched_idxs, targets)
    num_pos, num_images, iou_sum = process_mean(
        torch.stack([positive.sum().float(), torch.full((), float(n), device=positive.device), iou_target.sum()]))

    cls_target = torch.zeros_like(cls_logits, dtype=torch.float32)
    cls_target.scatter_(-1, torch.gather(targets.labels, 1, gt)[..., None], positive[..., None].float())
    cls_loss = sigmoid_focal_loss(cls_logits.float(), cls_target, weights.focal_alpha, weights.focal_gamma)
    cls_loss = (cls_loss.sum(-1) * (matched_idxs != IGNORE)).sum() / torch.maximum(num_pos, num_images)

    giou = giou_loss(pred_boxes, gt_boxes)
    if weights.box_weighting == "iou":
        box_loss = (giou * iou_target).sum() / iou_sum.clamp(min=1e-6)
    else:
        box_loss = (giou * positive).sum() / num_pos.clamp(min=1.0)
    iou_loss = _iou_branch_loss(iou_logits, iou_target, positive, num_pos)
    return {"loss_cls": cls_loss, "loss_box": weights.box * box_loss, "loss_iou": weights.iou * iou_loss}


def _matched_boxes(box_deltas: Tensor, anchors: Tensor, matched_idxs: Tensor, targets: Targets):
    """positive (N, A) bool, gt (N, A) int64 (0 off positives), the decoded and the GT boxes
    (N, A, 4), and the IoU of the detached decoded box with its GT (N, A), 0 off positives."""
    positive = matched_idxs >= 0
    gt = matched_idxs.clamp(min=0)
    # Dense over every anchor, masked, rather than indexed by `positive`: boolean indexing
    # waits for the device to count the positives; this keeps the step free of host syncs.
    # Anchors that are not positive compare their anchor box with itself (a finite, zero loss).
    anchor_boxes = anchors.expand(matched_idxs.shape[0], -1, -1)
    on_positive = positive[..., None]
    pred_boxes = torch.where(on_positive, coder.decode(anchors, box_deltas.float()), anchor_boxes)
    gt_boxes = torch.where(on_positive, torch.gather(targets.boxes.float(), 1, gt[..., None].expand(-1, -1, 4)), anchor_boxes)
    return positive, gt, pred_boxes, gt_boxes, aligned_iou(pred_boxes.detach(), gt_boxes) * positive


def _iou_branch_loss(iou_logits: Tensor, iou_target: Tensor, positive: Tensor, num_pos: Tensor) -> Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(iou_logits.float(), iou_target, reduction="none")
    return (bce * positive).sum() / num_pos.clamp(min=1.0)


@dataclass(frozen=True)
class TALLossWeights:
    """TOOD's head loss: quality focal loss (exponent 2, weight 1) on the normalised alignment,
    GIoU x 2 weighted by it; the IoU branch trained as in PAA (weight 0.5) as a quality term."""

    qfl_beta: float = 2.0
    box: float = 2.0
    iou: float = 0.5


def tal_soft_target(anchors: Tensor, cls_logits: Tensor, box_deltas: Tensor, matched_idxs: Tensor, targets: Targets,
                    alpha: float, beta: float) -> Tensor:
    """TOOD's normalised alignment of each positive, 0 elsewhere: t / (max t + 1e-7) x max u,
    the maxima over the positives of the same GT, t = s^alpha x u^beta (s: sigmoid probability
    of the GT's class, u: IoU of the decoded box with the GT). (N, A) float32, detached."""
    with torch.no_grad():
        positive = matched_idxs >= 0
        gt = matched_idxs.clamp(min=0)
        label = torch.gather(targets.labels, 1, gt)
        score = torch.gather(cls_logits.float().sigmoid(), 2, label[..., None])[..., 0]
        gt_boxes = torch.gather(targets.boxes.float(), 1, gt[..., None].expand(-1, -1, 4))
        iou = torch.where(positive, aligned_iou(coder.decode(anchors, box_deltas.float()), gt_boxes), 0.0)
        metric = torch.where(positive, score ** alpha * iou ** beta, 0.0)
        per_gt = torch.zeros(2, *targets.labels.shape, device=gt.device)
        max_metric = per_gt[0].scatter_reduce(1, gt, metric, "amax")
        max_iou = per_gt[1].scatter_reduce(1, gt, iou, "amax")
        normalised = metric / (torch.gather(max_metric, 1, gt) + 1e-7) * torch.gather(max_iou, 1, gt)
        return torch.where(positive, normalised, 0.0)


def quality_focal_loss(logits: Tensor, target: Tensor, beta: float) -> Tensor:
    """Elementwise QFL (Li et al. 2020): BCE(logit, target) x |target - sigmoid(logit)|^beta."""
    return (torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            * (target - logits.sigmoid()).abs() ** beta)


def tal_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    iou_logits: Tensor,
    anchors: Tensor,
    matched_idxs: Tensor,
    targets: Targets,
    soft_target: Tensor,
    weights: TALLossWeights = TALLossWeights(),
    process_mean: Callable[[Tensor], Tensor] = _identity,
) -> dict[str, Tensor]:
    """loss_cls, loss_box, loss_iou of one network on a task-aligned assignment.

    Shapes as `detection_loss`; soft_target (N, A) float32: the classification target of each
    positive at its GT's class (`tal_soft_target`), 0 elsewhere. Classification: QFL summed
    over classes and non-IGNORE anchors; box: GIoU weighted by the soft target; both divided
    by max(1, the soft targets' sum), TOOD's normaliser. IoU branch: BCE on positives as PAA.
    """
    positive, gt, pred_boxes, gt_boxes, iou_target = _matched_boxes(box_deltas, anchors, matched_idxs, targets)
    soft_target = soft_target * positive
    norm, num_pos = process_mean(torch.stack([soft_target.sum(), positive.sum().float()]))

    cls_target = torch.zeros_like(cls_logits, dtype=torch.float32)
    cls_target.scatter_(-1, torch.gather(targets.labels, 1, gt)[..., None], soft_target[..., None])
    cls_loss = quality_focal_loss(cls_logits.float(), cls_target, weights.qfl_beta).sum(-1)
    cls_loss = (cls_loss * (matched_idxs != IGNORE)).sum() / norm.clamp(min=1.0)
    giou = giou_loss(pred_boxes, gt_boxes)
    box_loss = (giou * soft_target).sum() / norm.clamp(min=1.0)
    iou_loss = _iou_branch_loss(iou_logits, iou_target, positive, num_pos)
    return {"loss_cls": cls_loss, "loss_box": weights.box * box_loss, "loss_iou": weights.iou * iou_loss}


@dataclass(frozen=True)
class SoftLabelWeights:
    """Soft-label distillation (docs/method.md, "Soft labels"): class KL weight, IoU-branch KL weight,
    GIoU-to-teacher weight, focal exponent, teacher-box IoU threshold for the box terms."""

    cls: float = 2.0
    iou: float = 10.0
    box: float = GIOU_WEIGHT
    gamma: float = 0.5
    box_iou_threshold: float = 0.5


def binary_kl_with_logits(student: Tensor, teacher: Tensor) -> Tensor:
    """Elementwise KL(Bernoulli(sigmoid(teacher)) || Bernoulli(sigmoid(student)))."""
    p_t = teacher.sigmoid()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return bce(student, p_t, reduction="none") - bce(teacher, p_t, reduction="none")


def soft_label_loss(student, teacher, anchors: Tensor, targets: Targets, weights: SoftLabelWeights,
                    num_pos: Tensor, process_mean: Callable[[Tensor], Tensor] = _identity) -> dict[str, Tensor]:
    """loss_kd_cls (every anchor, focal-weighted binary KL per class), loss_kd_iou and
    loss_kd_box (on anchors whose teacher box overlaps a GT above the threshold, weighted by
    that IoU). student, teacher: Predictions with cls_logits (N, A, C), box_deltas (N, A, 4),
    iou_logits (N, A); num_pos: this process's positive count (normalisers as in
    `detection_loss`)."""
    n = student.cls_logits.shape[0]
    t_boxes = coder.decode(anchors, teacher.box_deltas.float().detach())  # (N, A, 4)
    overlap = _max_iou_with_gt(t_boxes, targets)
    w = torch.where(overlap > weights.box_iou_threshold, overlap, 0.0)
    num_pos, num_images, norm = process_mean(torch.stack([num_pos.float(), torch.full((), float(n), device=w.device), w.sum()]))
    norm = norm.clamp(min=1e-6)

    s_cls, t_cls = student.cls_logits.float(), teacher.cls_logits.float().detach()
    # |p_t - p_s|^gamma has an infinite derivative where the probabilities tie (common with bf16
    # logits); its product with the KL has a zero one there, which autograd only gives if the tie
    # is kept out of the power.
    gap = (t_cls.sigmoid() - s_cls.sigmoid()).abs()
    tied = gap == 0
    focal = torch.where(tied, 0.0, torch.where(tied, 1.0, gap) ** weights.gamma)
    kd_cls = (focal * binary_kl_with_logits(s_cls, t_cls)).sum() / torch.maximum(num_pos, num_images)

    kd_iou = (w * binary_kl_with_logits(student.iou_logits.float(), teacher.iou_logits.float().detach())).sum() / norm
    keep = (w > 0)[..., None]  # dense and masked, as in detection_loss
    s_boxes = torch.where(keep, coder.decode(anchors, student.box_deltas.float()), t_boxes)
    kd_box = (w * giou_loss(s_boxes, t_boxes)).sum() / norm
    return {"loss_kd_cls": weights.cls * kd_cls, "loss_kd_iou": weights.iou * kd_iou, "loss_kd_box": weights.box * kd_box}


def _max_iou_with_gt(boxes: Tensor, targets: Targets) -> Tensor:
    """(N, A, 4) -> (N, A): each box's best IoU with a valid GT of its image."""
    iou = pairwise_iou(boxes, targets.boxes.float())  # (N, A, M)
    return torch.where(targets.valid[:, None, :], iou, 0.0).amax(-1)
