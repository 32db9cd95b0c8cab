"""PAA label assignment (docs/method.md, "PAA assignment"), batched over images and GTs.

Shapes: N images, A anchors (one padded shape per batch), M GT slots (padded, see
`Targets.valid`), C classes, L pyramid levels, K = L x topk pooled candidates per GT.
An assignment is torchvision's `matched_idxs`: (N, A) int64, the GT index of each
anchor, BACKGROUND (-1) or IGNORE (-2) (`lad_cli.structures`).
"""
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..losses import FOCAL_ALPHA, FOCAL_GAMMA, GIOU_WEIGHT
from ..model import coder
from ..model.anchors import anchor_levels
from ..model.boxes import pairwise_iof, pairwise_iou
from ..structures import BACKGROUND, IGNORE, Targets
from .gmm import Mixture, fit_two_gaussians, split_low_component


@dataclass(frozen=True)
class PAAParams:
    candidate_iou: float = 0.1
    topk: int = 9
    box_cost_weight: float = GIOU_WEIGHT
    focal_alpha: float = FOCAL_ALPHA
    focal_gamma: float = FOCAL_GAMMA
    # Negatives covered this much by a crowd region are ignored (not the reference: it has no ignore).
    crowd_iof: float = 0.5
    tol: float = 1e-3
    max_iter: int = 100
    reg_covar: float = 1e-6

    def to_dict(self) -> dict:
        return asdict(self)


def candidates(anchors: Tensor, targets: Targets, params: PAAParams) -> Tensor:
    """Which GT each anchor is a candidate of: (A, 4) -> (N, A) int64, -1 for none.

    Max-IoU matching at `candidate_iou`, then each GT in order takes the anchors tied at
    its highest IoU (a later GT overrides an earlier one). A GT that overlaps no anchor
    at all gets no candidate (the reference would hand it every anchor).
    """
    m = targets.labels.shape[1]
    iou = pairwise_iou(targets.boxes.float(), anchors)  # (N, M, A)
    iou = torch.where(targets.valid[..., None], iou, -1.0)
    best_iou, best_gt = iou.max(dim=1)
    cand = torch.where(best_iou >= params.candidate_iou, best_gt, -1)
    gt_best = iou.amax(dim=2, keepdim=True)
    is_gt_best = (iou == gt_best) & (gt_best > 0)
    gt_index = torch.arange(m, device=anchors.device)[None, :, None]
    last_claim = torch.where(is_gt_best, gt_index, -1).amax(dim=1)
    return torch.where(last_claim >= 0, last_claim, cand)


def candidate_costs(
    anchors: Tensor, cls_logits: Tensor, box_deltas: Tensor, cand: Tensor, targets: Targets, params: PAAParams
) -> Tensor:
    """PAA cost of each anchor for its candidate GT; +inf where it is no candidate.

    anchors (A, 4), cls_logits (N, A, C), box_deltas (N, A, 4), cand (N, A) -> (N, A) float32.
    Cost = focal loss summed over classes + 1.3 x GIoU loss of the decoded box. Computed on
    the candidates only (a few percent of the anchors).
    """
    img, anc = (cand >= 0).nonzero(as_tuple=True)
    gt = cand[img, anc]
    onehot = torch.nn.functional.one_hot(targets.labels[img, gt], cls_logits.shape[-1]).float()
    cls_cost = sigmoid_focal_loss(cls_logits[img, anc].float(), onehot, params.focal_alpha, params.focal_gamma).sum(-1)
    boxes = coder.decode(anchors[anc], box_deltas[img, anc].float())
    box_cost = generalized_box_iou_loss(boxes, targets.boxes[img, gt].float(), reduction="none")
    cost = torch.full(cand.shape, torch.inf, device=cand.device)
    cost[img, anc] = cls_cost + params.box_cost_weight * box_cost
    return cost


def _group_sort(group: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
    """The order sorting by (group, cost), ties kept in input order, and each element's rank
    within its group in that order. group, cost: (K,) -> (K,) int64, (K,) int64."""
    order = torch.sort(cost, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    g = group[order]
    position = torch.arange(len(g), device=g.device)
    starts = torch.ones_like(g, dtype=torch.bool)
    starts[1:] = g[1:] != g[:-1]
    return order, position - torch.cummax(torch.where(starts, position, 0), 0).values


def pooled_topk(cost: Tensor, cand: Tensor, num_per_level: list[int], num_gts: int, topk: int) -> tuple[Tensor, Tensor]:
    """Per GT and level the `topk` cheapest candidates, pooled and sorted by cost.

    cost, cand: (N, A) -> costs (N, M, K) float32 (+inf in empty slots, which come
    last) and anchor indices (N, M, K) int64, K = levels x topk. Ties go to the lower
    anchor index. Works on the candidate list (sorts of a few thousand entries), not on
    dense (N, M, A) matrices.
    """
    n, levels = cand.shape[0], len(num_per_level)
    level_of = anchor_levels(num_per_level, cand.device)
    img, anc = (cand >= 0).nonzero(as_tuple=True)  # row-major: ties stay in anchor order
    gt, c = cand[img, anc], cost[img, anc]
    order, rank = _group_sort((img * num_gts + gt) * levels + level_of[anc], c)
    keep = order[rank < topk]
    img, anc, gt, c = img[keep], anc[keep], gt[keep], c[keep]
    order, slot = _group_sort(img * num_gts + gt, c)
    row = (img * num_gts + gt)[order]
    costs = torch.full((n * num_gts, levels * topk), torch.inf, device=cand.device)
    idx = torch.zeros((n * num_gts, levels * topk), dtype=torch.int64, device=cand.device)
    costs[row, slot] = c[order]
    idx[row, slot] = anc[order]
    return costs.view(n, num_gts, -1), idx.view(n, num_gts, -1)


@dataclass
class PooledFit:
    """Per GT slot: pooled candidate costs (N, M, K) float32, ascending, +inf in empty slots;
    their anchor indices (N, M, K) int64; the mixture fitted to each row (N x M rows,
    float64); which slots are positives (N, M, K) bool."""

    costs: Tensor
    anchor_idx: Tensor
    mixture: Mixture
    positive: Tensor


def fit_pooled(cost: Tensor, cand: Tensor, num_per_level: list[int], num_gts: int, params: PAAParams) -> PooledFit:
    """Pool each GT's cheapest candidates per level, fit its mixture, split off the positives."""
    n = cand.shape[0]
    costs, idx = pooled_topk(cost, cand, num_per_level, num_gts, params.topk)
    valid = torch.isfinite(costs)
    flat_costs, flat_valid = costs.reshape(n * num_gts, -1), valid.reshape(n * num_gts, -1)
    mixture = fit_two_gaussians(flat_costs, flat_valid, params.tol, params.max_iter, params.reg_covar)
    positive = split_low_component(flat_costs, flat_valid, mixture).reshape(n, num_gts, -1)
    positive &= (valid.sum(-1) >= 2)[..., None]
    return PooledFit(costs, idx, mixture, positive)


def assign_from_costs(
    cost: Tensor, cand: Tensor, num_per_level: list[int], targets: Targets, params: PAAParams, anchors: Tensor
) -> Tensor:
    """Mixture split of the pooled costs -> matched_idxs (N, A) int64."""
    n, a = cand.shape
    m = targets.labels.shape[1]
    matched = torch.full((n, a), BACKGROUND, dtype=torch.int64, device=cand.device)
    fit = fit_pooled(cost, cand, num_per_level, m, params)
    idx, positive = fit.anchor_idx, fit.positive
    gt_of_slot = torch.arange(m, device=cand.device)[None, :, None].expand_as(idx)
    image = torch.arange(n, device=cand.device)[:, None, None].expand_as(idx)
    matched[image[positive], idx[positive]] = gt_of_slot[positive]
    return mark_crowd_ignored(matched, anchors, targets, params)


def mark_crowd_ignored(matched: Tensor, anchors: Tensor, targets: Targets, params: PAAParams) -> Tensor:
    """Background anchors mostly inside a crowd region become IGNORE."""
    if targets.crowd_boxes.shape[1] == 0:
        return matched
    iof = pairwise_iof(targets.crowd_boxes.float(), anchors)  # (N, K, A)
    covered = (torch.where(targets.crowd_valid[..., None], iof, 0.0) >= params.crowd_iof).any(1)
    return torch.where(covered & (matched == BACKGROUND), IGNORE, matched)


def paa_assign(
    anchors: Tensor,
    num_per_level: list[int],
    cls_logits: Tensor,
    box_deltas: Tensor,
    targets: Targets,
    params: PAAParams = PAAParams(),
) -> Tensor:
    """PAA assignment from one network's predictions.

    anchors (A, 4) float32; cls_logits (N, A, C); box_deltas (N, A, 4); targets with M
    GT slots. Returns matched_idxs (N, A) int64 on the predictions' device. Gradients
    never flow through it.
    """
    with torch.no_grad():
        if targets.labels.shape[1] == 0:
            background = torch.full(cls_logits.shape[:2], BACKGROUND, dtype=torch.int64, device=cls_logits.device)
            return mark_crowd_ignored(background, anchors, targets, params)
        cand = candidates(anchors, targets, params)
        cost = candidate_costs(anchors, cls_logits, box_deltas, cand, targets, params)
        return assign_from_costs(cost, cand, num_per_level, targets, params, anchors)
