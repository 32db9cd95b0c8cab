"""Task-aligned assignment (TOOD, Feng et al. 2021; YOLOv8's assigner), batched over images
and GTs (docs/method.md, "Task-aligned assignment").

Shapes: N images, A anchors, M GT slots (padded, `Targets.valid`), C classes. The result is
torchvision's `matched_idxs` (N, A) int64: GT index, BACKGROUND (-1), IGNORE (-2). The soft
classification target (the normalised alignment) is not returned: it follows from the
assignment and the predictions (`losses.tal_soft_target`).

Two ways to the same assignment. On CUDA, for small inputs, or for anchors that are not a grid,
the alignment is dense (N, M, A) (no host sync). On the CPU at COCO size, where those tensors
made the batched assignment no faster than a per-GT loop, `assign/tal_grid.py` computes it
only for the pairs that can reach a GT's topk, found on the anchor grid.
"""
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..model import coder
from ..model.boxes import pairwise_iou
from ..structures import BACKGROUND, Predictions, Targets
from .candidates import level_grids
from .colearn import flat_spread
from .dense import centres_inside, gt_valid, highest_iou_gt, topk_mask
from .paa import mark_crowd_ignored
from .tal_grid import grid_tal_assign

# (image, GT, anchor) triples below which the dense path is as fast as the grid search.
_DENSE_TRIPLES = 1 << 22


@dataclass(frozen=True)
class TALParams:
    topk: int = 13
    alpha: float = 1  # exponent of the class probability
    beta: float = 6  # exponent of the IoU
    centre_margin: float = 0.01  # a positive's anchor centre is inside its GT by more than this
    crowd_iof: float = 0.5  # background anchors this much inside a crowd region are ignored (as PAA)

    def to_dict(self) -> dict:
        return asdict(self)


def alignment_metric(anchors: Tensor, cls_logits: Tensor, box_deltas: Tensor, targets: Targets,
                     params: TALParams) -> tuple[Tensor, Tensor]:
    """t = s^alpha x u^beta and u for every (image, GT, anchor): anchors (A, 4), cls_logits
    (N, A, C), box_deltas (N, A, 4) -> (N, M, A) float32 twice. s: sigmoid probability of the
    GT's class, u: IoU of the decoded box with the GT. Padding GT slots give 0."""
    n, a, _ = cls_logits.shape
    labels = targets.labels[..., None].expand(-1, -1, a)
    score = torch.gather(cls_logits.float().sigmoid().transpose(1, 2), 1, labels)  # (N, M, A)
    iou = pairwise_iou(targets.boxes.float(), coder.decode(anchors, box_deltas.float()))  # (N, M, A)
    iou = torch.where(gt_valid(targets), iou, 0.0)
    return score ** params.alpha * iou ** params.beta, iou


def assign_from_alignment(metric: Tensor, iou: Tensor, anchors: Tensor, targets: Targets, params: TALParams) -> Tensor:
    """Each GT's topk anchors by alignment (ties: lower index) with t > 0 and centre inside
    are its positives; an anchor claimed twice goes to the higher IoU. (N, M, A) -> (N, A)."""
    positive = topk_mask(metric, params.topk) & (metric > 0) & gt_valid(targets)
    positive &= centres_inside(anchors, targets.boxes.float(), params.centre_margin)
    return mark_crowd_ignored(highest_iou_gt(positive, iou), anchors, targets, params)


def tal_assign(anchors: Tensor, num_per_level: list[int], cls_logits: Tensor, box_deltas: Tensor,
               targets: Targets, params: TALParams = TALParams()) -> Tensor:
    """Task-aligned assignment from one network's predictions: anchors (A, 4), cls_logits
    (N, A, C), box_deltas (N, A, 4) -> matched_idxs (N, A) int64 on their device. The level
    counts are unused (TAL ranks anchors of all levels together); the argument keeps the
    signature of `paa_assign`. Gradients never flow through it."""
    with torch.no_grad():
        if targets.labels.shape[1] == 0:
            background = torch.full(cls_logits.shape[:2], BACKGROUND, dtype=torch.int64, device=cls_logits.device)
            return mark_crowd_ignored(background, anchors, targets, params)
        n, m = targets.labels.shape
        large_on_cpu = cls_logits.device.type == "cpu" and n * m * anchors.shape[0] > _DENSE_TRIPLES
        grids = level_grids(anchors) if large_on_cpu else None
        if grids is None:
            metric, iou = alignment_metric(anchors, cls_logits, box_deltas, targets, params)
            return assign_from_alignment(metric, iou, anchors, targets, params)
        return mark_crowd_ignored(grid_tal_assign(anchors, grids, cls_logits, box_deltas, targets, params), anchors,
                                  targets, params)


def _spread(top: Tensor) -> Tensor:
    """std/mean (population std) over the last dim, as PAA co-learning's switch: (N, M, k) -> (N, M)."""
    mean = top.sum(-1) / top.shape[-1]
    var = ((top - mean[..., None]) ** 2).sum(-1) / top.shape[-1]
    return var.sqrt() / mean.clamp(min=1e-12)


def tal_colearn_assign(anchors: Tensor, num_per_level: list[int], first: Predictions, second: Predictions,
                       targets: Targets, rule: str = "gt-level", params: TALParams = TALParams()) -> tuple[Tensor, Tensor]:
    """Co-learning with TAL: per GT ("gt-level") or for the batch ("iteration"), the network
    whose top-k alignments have the larger std/mean defines that GT's alignment and IoU (ties:
    `first`); then the TAL rule. Returns matched_idxs (N, A) and the share won by `first`."""
    with torch.no_grad():
        metric_a, iou_a = alignment_metric(anchors, first.cls_logits, first.box_deltas, targets, params)
        metric_b, iou_b = alignment_metric(anchors, second.cls_logits, second.box_deltas, targets, params)
        k = min(params.topk, metric_a.shape[-1])
        top_a, top_b = metric_a.topk(k, dim=-1).values, metric_b.topk(k, dim=-1).values  # (N, M, k)
        valid = targets.valid
        if rule == "iteration":
            first_wins = (flat_spread(top_a[valid]) >= flat_spread(top_b[valid])).expand_as(valid)
        else:
            first_wins = _spread(top_a) >= _spread(top_b)  # (N, M)
        pick = first_wins[..., None]
        matched = assign_from_alignment(torch.where(pick, metric_a, metric_b), torch.where(pick, iou_a, iou_b),
                                        anchors, targets, params)
        share = (first_wins & valid).sum() / valid.sum().clamp(min=1)
        return matched, share.float()
