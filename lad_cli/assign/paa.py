"""PAA label assignment (docs/method.md, "PAA assignment"), batched over images and GTs.

Shapes: N images, A anchors (one padded shape per batch), M GT slots (padded, see
`Targets.valid`), C classes, L pyramid levels, K = L x topk pooled candidates per GT.
An assignment is torchvision's `matched_idxs`: (N, A) int64, the GT index of each
anchor, BACKGROUND (-1) or IGNORE (-2) (`lad_cli.structures`).
"""
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..losses import FOCAL_ALPHA, FOCAL_GAMMA, GIOU_WEIGHT, giou_loss
from ..model import coder
from ..model.anchors import anchor_levels
from ..model.boxes import pairwise_iof
from ..structures import BACKGROUND, IGNORE, Targets
from .candidates import find_candidates
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
    at all gets no candidate (the reference would hand it every anchor). See
    `assign/candidates.py` for how the IoUs are searched.
    """
    return find_candidates(anchors, targets, params.candidate_iou)


@dataclass
class CandidateList:
    """The candidates of a batch, in row-major (image, anchor) order: image, anchor and gt,
    each (K,) int64. The later steps work on this list, never on dense (N, M, A) tensors."""

    image: Tensor
    anchor: Tensor
    gt: Tensor

    @staticmethod
    def of(cand: Tensor) -> "CandidateList":
        """From `candidates`' (N, A) matrix: the one host sync of the assignment's sparse part."""
        image, anchor = (cand >= 0).nonzero(as_tuple=True)
        return CandidateList(image, anchor, cand[image, anchor])


# Candidates whose class cost is computed at once on the CPU: their (rows x classes)
# temporaries then stay in the core's cache (6x faster than one block at COCO size).
_CPU_COST_ROWS = 1024


def class_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid focal loss against one-hot `labels`, summed over classes: (K, C) x (K,) -> (K,)
    float32. torchvision's `sigmoid_focal_loss` arithmetic element for element (the same
    bits), with the one-hot target written out: on a zero target p_t = 1 - p and alpha_t =
    1 - alpha, on the label alpha_t = alpha and p_t = p."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss = bce(logits, torch.zeros_like(logits), reduction="none")
    one_minus_pt = torch.sigmoid(logits).neg_().add_(1).neg_().add_(1)  # 1 - (1 - p), as torchvision rounds it
    loss.mul_(one_minus_pt.pow_(gamma)).mul_(1 - alpha)
    on_label = logits.gather(1, labels[:, None])
    positive = alpha * (bce(on_label, torch.ones_like(on_label), reduction="none") * (1 - torch.sigmoid(on_label)) ** gamma)
    return loss.scatter_(1, labels[:, None], positive).sum(-1)


def candidate_costs(anchors: Tensor, cls_logits: Tensor, box_deltas: Tensor, cands: CandidateList, targets: Targets,
                    params: PAAParams) -> Tensor:
    """PAA cost of each candidate for its GT: (K,) float32.

    anchors (A, 4), cls_logits (N, A, C), box_deltas (N, A, 4). Cost = focal loss summed over
    classes + 1.3 x GIoU loss of the decoded box, on the candidates only (a few percent of
    the anchors).
    """
    a, c = cls_logits.shape[1:]
    at = cands.image * a + cands.anchor  # flat (image, anchor): index_select is the fast gather
    of = cands.image * targets.labels.shape[1] + cands.gt  # flat (image, GT)
    labels = targets.labels.reshape(-1).index_select(0, of)
    logits = cls_logits.reshape(-1, c)
    rows = _CPU_COST_ROWS if cls_logits.device.type == "cpu" else max(1, len(at))
    cls_cost = [class_cost(logits.index_select(0, i).float(), lab, params.focal_alpha, params.focal_gamma)
                for i, lab in zip(at.split(rows), labels.split(rows))]
    boxes = coder.decode(anchors.index_select(0, cands.anchor), box_deltas.reshape(-1, 4).index_select(0, at).float())
    gt_boxes = targets.boxes.reshape(-1, 4).index_select(0, of).float()
    box_cost = giou_loss(boxes, gt_boxes)
    return (torch.cat(cls_cost) if cls_cost else box_cost.new_zeros(0)) + params.box_cost_weight * box_cost


def _group_sort(group: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
    """The order sorting by (group, cost), ties kept in input order, and each element's rank
    within its group in that order. group (K,) int64 in [0, 2^31), cost (K,) float32 >= 0
    (+inf allowed) -> (K,) int64, (K,) int64.

    One stable sort of an int64 key: the group in the high 32 bits, the cost's IEEE bits in
    the low ones (for non-negative floats the bit patterns sort as the values do).
    """
    key = (group << 32) | (cost + 0.0).view(torch.int32).long()  # + 0.0 turns a -0.0 into 0.0
    order = torch.sort(key, stable=True).indices
    g = group[order]
    position = torch.arange(len(g), device=g.device)
    starts = torch.ones_like(g, dtype=torch.bool)
    starts[1:] = g[1:] != g[:-1]
    return order, position - torch.cummax(torch.where(starts, position, 0), 0).values


def pooled_topk(cost: Tensor, cands: CandidateList, num_per_level: list[int], num_images: int, num_gts: int,
                topk: int) -> tuple[Tensor, Tensor]:
    """Per GT and level the `topk` cheapest candidates, pooled and sorted by cost.

    cost (K,) -> costs (N, M, L x topk) float32 (+inf in empty slots, which come last) and
    anchor indices (N, M, L x topk) int64 (0 in empty slots). Ties go to the lower anchor
    index. Sorts of the candidate list; no boolean indexing (no host sync). A NaN cost (from
    non-finite predictions) counts as +inf: never a positive. The loss or gradient norm of
    those predictions is non-finite too, and the training loop's non-finite stop reports it.
    """
    # Costs are losses (>= 0); a NaN's bits (sign set or not) would corrupt `_group_sort`'s key.
    cost = torch.where(cost >= 0, cost, torch.inf)
    levels, width = len(num_per_level), len(num_per_level) * topk
    img, anc, gt = cands.image, cands.anchor, cands.gt
    row = img * num_gts + gt
    order, rank = _group_sort(row * levels + anchor_levels(num_per_level, cost.device)[anc], cost)
    # The candidates beyond a level's top k go to a spare slot. They are grouped apart from the
    # kept ones of their GT's row (row * 2 + 1), as a kept cost may be +inf too.
    kept = rank < topk
    pooled_cost = torch.where(kept, cost[order], torch.inf)
    second, slot = _group_sort(row[order] * 2 + (~kept).long(), pooled_cost)
    slot = torch.where(kept[second], slot, width)
    final = order[second]
    costs = torch.full((num_images * num_gts, width + 1), torch.inf, device=cost.device)
    idx = torch.zeros((num_images * num_gts, width + 1), dtype=torch.int64, device=cost.device)
    costs[row[final], slot] = pooled_cost[second]
    idx[row[final], slot] = torch.where(kept[second], anc[final], 0)
    return costs[:, :width].reshape(num_images, num_gts, width), idx[:, :width].reshape(num_images, num_gts, width)


@dataclass
class PooledFit:
    """Per GT slot: pooled candidate costs (N, M, K) float32, ascending, +inf in empty slots;
    their anchor indices (N, M, K) int64; the mixture fitted to each row (N x M rows,
    float64); which slots are positives (N, M, K) bool."""

    costs: Tensor
    anchor_idx: Tensor
    mixture: Mixture
    positive: Tensor


def fit_pooled(cost: Tensor, cands: CandidateList, num_per_level: list[int], num_images: int, num_gts: int,
               params: PAAParams) -> PooledFit:
    """Pool each GT's cheapest candidates per level, fit its mixture, split off the positives."""
    costs, idx = pooled_topk(cost, cands, num_per_level, num_images, num_gts, params.topk)
    valid = torch.isfinite(costs)
    flat_costs, flat_valid = costs.reshape(num_images * num_gts, -1), valid.reshape(num_images * num_gts, -1)
    mixture = fit_two_gaussians(flat_costs, flat_valid, params.tol, params.max_iter, params.reg_covar)
    positive = split_low_component(flat_costs, flat_valid, mixture).reshape(num_images, num_gts, -1)
    positive &= (valid.sum(-1) >= 2)[..., None]
    return PooledFit(costs, idx, mixture, positive)


def assign_from_costs(cost: Tensor, cands: CandidateList, num_per_level: list[int], targets: Targets, params: PAAParams,
                      anchors: Tensor) -> Tensor:
    """Mixture split of the candidates' pooled costs (K,) -> matched_idxs (N, A) int64."""
    n, m = targets.labels.shape
    a = anchors.shape[0]
    fit = fit_pooled(cost, cands, num_per_level, n, m, params)
    # Positives scattered by flat index, the others to a spare element: no boolean indexing.
    image = torch.arange(n, device=cost.device)[:, None, None]
    target = torch.where(fit.positive, image * a + fit.anchor_idx, n * a).flatten()
    gt_of_slot = torch.arange(m, device=cost.device)[None, :, None].expand_as(fit.anchor_idx).flatten()
    matched = torch.full((n * a + 1,), BACKGROUND, dtype=torch.int64, device=cost.device)
    matched = matched.scatter(0, target, gt_of_slot)[: n * a].view(n, a)
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
        cands = CandidateList.of(candidates(anchors, targets, params))
        cost = candidate_costs(anchors, cls_logits, box_deltas, cands, targets, params)
        return assign_from_costs(cost, cands, num_per_level, targets, params, anchors)
