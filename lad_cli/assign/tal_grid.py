"""Task-aligned assignment on the CPU at COCO size: what `tal.assign_from_alignment(
tal.alignment_metric(...))` gives, without the dense (N, M, A) tensors.

Each GT's topk is over all anchors, inside it or not, so the pairs that matter are those whose
alignment t reaches the GT's k-th largest. A lower bound L of it comes first, from a fixed
sample of anchors (per level the 5 x 5 nearest the GT's centre): the k-th largest t among
them. t = s^alpha x u^beta >= L needs u >= theta = L^(1/beta) (s <= 1), and an IoU of theta
needs a box that overlaps the GT by theta of its width and height and whose area is within a
factor theta of the GT's. On each level's anchor grid (`candidates.LevelGrid`) the anchors
whose decoded box can do that form a rectangle of cells per GT, enumerated as PAA's
candidates are (`candidates.rectangle_cells`). Every pair left out has t < L: it can neither
be a positive nor outrank one. The pairs kept are ranked per GT by one sort.

Every u and t is computed with the dense path's operations on the same values; sigmoid and pow
run on whole SIMD blocks (`_vectorised`), as on the dense tensors.

Shapes: N images, M GT slots, A anchors, C classes, P pairs; a slot is flat over (image, GT).
"""
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..model import coder
from ..model.boxes import area
from ..structures import BACKGROUND, Targets
from .candidates import LevelGrid, rectangle_cells

if TYPE_CHECKING:
    from .tal import TALParams

_SLOTS_PER_BLOCK = 256  # GT slots searched at once: bounds the pairs held when L is 0 (untrained)
_SAMPLE_SPAN = 5  # anchors sampled per level and GT: the SPAN x SPAN nearest the GT's centre
_SLACK = 1e-3  # relative margin on theta and the area bounds, far above float32 rounding
_INF_BITS = 0x7F800000  # float32 +inf as int32


def grid_tal_assign(anchors: Tensor, grids: list[LevelGrid], cls_logits: Tensor, box_deltas: Tensor,
                    targets: Targets, params: "TALParams") -> Tensor:
    """matched_idxs (N, A) int64 before the crowd rule, for anchors laid out as `grids`."""
    n, a = cls_logits.shape[:2]
    m = targets.labels.shape[1]
    pairs = _Pairs(anchors, box_deltas, cls_logits, targets, params)
    floor = _sample_floor(grids, pairs, targets, params.topk)  # (N x M,) L per slot
    theta = floor.double().pow(1.0 / params.beta).mul_(1 - _SLACK).float()
    ranges = [_search_ranges(pairs, g, targets, theta.view(n, m)) for g in grids]
    found = [_block_positives(first, min(first + _SLOTS_PER_BLOCK, n * m), ranges, grids, pairs, floor, theta, params)
             for first in range(0, n * m, _SLOTS_PER_BLOCK)]
    slot, anchor, iou = (torch.cat(parts) for parts in zip(*found))
    # Double claims: the highest IoU, ties to the lower GT index (`dense.highest_iou_gt`).
    at = pairs.image_start.index_select(0, slot) + anchor
    best = torch.full((n * a,), -torch.inf).scatter_reduce_(0, at, iou, "amax")
    gt = torch.where(iou == best.index_select(0, at), slot % m, m)
    first_gt = torch.full((n * a,), m).scatter_reduce_(0, at, gt, "amin")
    return torch.where(first_gt < m, first_gt, BACKGROUND).view(n, a)


class _Pairs:
    """The batch's decoded boxes, and the IoU u and alignment t of (slot, anchor) pairs,
    element for element what the dense `alignment_metric` computes for them."""

    def __init__(self, anchors: Tensor, box_deltas: Tensor, cls_logits: Tensor, targets: Targets, params: "TALParams"):
        n, a, self.classes = cls_logits.shape
        decoded = coder.decode(anchors, box_deltas.float())  # (N, A, 4), as the dense path decodes
        self.planes = decoded.permute(2, 0, 1).contiguous()  # (4, N, A): x1, y1, x2, y2
        self.decoded, self.area = decoded.reshape(-1, 4), area(decoded)  # (N x A, 4), (N, A)
        self.centres = torch.stack([(anchors[:, 0] + anchors[:, 2]) / 2.0, (anchors[:, 1] + anchors[:, 3]) / 2.0], 1)
        self.logits, self.labels = cls_logits.reshape(-1), targets.labels.reshape(-1)
        self.boxes, self.box_area = targets.boxes.float().reshape(-1, 4), area(targets.boxes.float()).reshape(-1)
        self.image_start = torch.arange(n).repeat_interleave(targets.labels.shape[1]) * a  # each slot's anchor 0
        self.params = params

    def iou(self, slot: Tensor, anchor: Tensor) -> Tensor:
        """(P,) x2 -> u (P,), `pairwise_iou`'s operations on the same values."""
        at = self.image_start.index_select(0, slot) + anchor
        box, pred = self.boxes.index_select(0, slot), self.decoded.index_select(0, at)
        iw = (torch.minimum(box[:, 2], pred[:, 2]) - torch.maximum(box[:, 0], pred[:, 0])).clamp_(min=0)
        ih = (torch.minimum(box[:, 3], pred[:, 3]) - torch.maximum(box[:, 1], pred[:, 1])).clamp_(min=0)
        inter = iw.mul_(ih)
        union = (self.box_area.index_select(0, slot) + self.area.view(-1).index_select(0, at)).sub_(inter)
        return inter.div_(union.clamp_(min=torch.finfo(inter.dtype).eps))

    def alignment(self, slot: Tensor, anchor: Tensor, iou: Tensor) -> Tensor:
        """t (P,) of the pairs whose IoU is `iou`."""
        at = self.image_start.index_select(0, slot) + anchor
        logit = self.logits.index_select(0, at * self.classes + self.labels.index_select(0, slot)).float()
        score = _vectorised(lambda s: s.sigmoid() ** self.params.alpha, logit)
        return score * _vectorised(lambda u: u ** self.params.beta, iou)

    def inside(self, slot: Tensor, anchor: Tensor) -> Tensor:
        """Whether each anchor centre is inside its GT by more than the margin (`dense.centres_inside`)."""
        box = self.boxes.index_select(0, slot)
        cx, cy = self.centres.index_select(0, anchor).unbind(1)
        margin = self.params.centre_margin
        return (cx - box[:, 0] > margin) & (cy - box[:, 1] > margin) & (box[:, 2] - cx > margin) & (box[:, 3] - cy > margin)


def _vectorised(fn, x: Tensor) -> Tensor:
    """fn(x) elementwise, every element through the kernels' SIMD path as on the dense tensors:
    PyTorch's CPU kernels compute the tail of a loop with scalar code that rounds sigmoid and
    pow differently (1 ulp, a few percent of elements), so the input is padded to whole SIMD
    blocks and cut into pieces that one thread runs in one loop (at most the grain size)."""
    padded = torch.cat([x, x.new_zeros(-len(x) % 64)])
    return torch.cat([fn(piece) for piece in padded.split(1 << 15)] or [fn(padded)])[:len(x)]


def _sample_floor(grids: list[LevelGrid], pairs: _Pairs, targets: Targets, k: int) -> Tensor:
    """Per slot the k-th largest t among distinct sampled anchors (0 if fewer; NaN counts as 0):
    a lower bound of the k-th largest over all anchors. (N x M,) float32."""
    boxes = pairs.boxes
    samples = []
    for g in grids:
        cells = []
        for lo, hi, centre in ((g.x1, g.x2, (boxes[:, 0] + boxes[:, 2]) / 2), (g.y1, g.y2, (boxes[:, 1] + boxes[:, 3]) / 2)):
            span = min(_SAMPLE_SPAN, len(lo))
            nearest = torch.searchsorted((lo + hi) / 2, centre.contiguous())
            cells.append((nearest - _SAMPLE_SPAN // 2).clamp(0, len(lo) - span)[:, None] + torch.arange(span))
        col, row = cells  # (S, span) each
        samples.append((g.start + row[:, :, None] * g.cols + col[:, None, :]).flatten(1))
    anchor = torch.cat(samples, 1)  # (S, samples)
    if anchor.shape[1] < k:
        return torch.zeros(len(boxes))
    slot = torch.arange(len(boxes)).repeat_interleave(anchor.shape[1])
    iou = pairs.iou(slot, anchor.reshape(-1))
    t = pairs.alignment(slot, anchor.reshape(-1), iou).view(anchor.shape)
    floor = t.nan_to_num(nan=0.0).topk(k, dim=1).values[:, -1]
    return torch.where(targets.valid.reshape(-1), floor, 0.0)


def _search_ranges(pairs: _Pairs, grid: LevelGrid, targets: Targets, theta: Tensor) -> list[Tensor]:
    """Per slot the columns [c0, c1) and rows [r0, r1) of `grid` holding every anchor whose
    decoded box can have IoU >= theta with the GT (IoU > 0 where theta is 0): four (N x M,)
    int64, empty for padding slots and where no box of the level has an area within a factor
    theta of the GT's.

    IoU >= theta needs an overlap of theta x the GT's width: x2 >= X1 + theta W and x1 <= X2 -
    theta W. The boxes of column c reach right at most to the largest x2 of the columns <= c
    and left at least to the smallest x1 of the columns >= c; both ascend with c, so the columns
    form one range, found by a search (exact: the same float comparisons); rows likewise. A box
    with a NaN coordinate or area (IoU NaN with every GT) reaches everywhere."""
    rows, cols = len(grid.y1), grid.cols
    level = pairs.planes[:, :, grid.start:grid.start + rows * cols].unflatten(2, (rows, cols))  # (4, N, rows, cols)
    level_area = pairs.area[:, grid.start:grid.start + rows * cols]
    lost = level_area.isnan().unflatten(1, (rows, cols))
    boxes = targets.boxes.float()
    ranges = []
    for k, across in ((0, 1), (1, 2)):  # x: extremes over the rows; y: over the columns
        unbounded = lost.any(across)
        right = torch.where(unbounded, torch.inf, level[k + 2].amax(across).nan_to_num(nan=torch.inf)).cummax(1).values
        left = torch.where(unbounded, -torch.inf, level[k].amin(across).nan_to_num(nan=-torch.inf))
        left = left.flip(1).cummin(1).values.flip(1)
        lo, hi = boxes[..., k], boxes[..., k + 2]
        inset = (theta * (hi - lo)).double() * (1 - _SLACK)
        # Rounded outwards to float32 (one step past the nearest), never past the GT's own edges.
        start = torch.maximum(torch.nextafter((lo.double() + inset).float(), torch.tensor(-torch.inf)), lo)
        end = torch.minimum(torch.nextafter((hi.double() - inset).float(), torch.tensor(torch.inf)), hi)
        ranges += [torch.searchsorted(right, start.contiguous(), right=True), torch.searchsorted(left, end.contiguous())]
    largest = level_area.nan_to_num(nan=torch.inf).amax(1, keepdim=True)
    smallest = level_area.nan_to_num(nan=0.0).amin(1, keepdim=True)
    gt_area = area(boxes)
    reachable = (largest >= theta * gt_area * (1 - _SLACK)) & (smallest * theta <= gt_area * (1 + _SLACK)) & targets.valid
    c0, c1, r0, r1 = (r.reshape(-1) for r in ranges)
    return [c0, torch.where(reachable.reshape(-1), c1, c0), r0, r1]


def _rank_in_slot(slot: Tensor, metric: Tensor) -> Tensor:
    """Each pair's rank among its slot's pairs by alignment, descending, ties in input order
    (ascending anchor), NaN first as `torch.topk` ranks it. slot (P,) in [0, 2^31), metric
    (P,) >= 0 or NaN -> (P,) int64. One stable sort of an int64 key: the slot in the high 32
    bits, below it the alignment's IEEE bits reversed (non-negative floats sort as their bits)."""
    bits = torch.where(metric.isnan(), torch.inf, metric).view(torch.int32).long()
    order = torch.sort((slot << 32) | (_INF_BITS - bits), stable=True).indices
    s = slot.index_select(0, order)
    position = torch.arange(len(s))
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[1:] = s[1:] != s[:-1]
    rank = position - torch.cummax(torch.where(starts, position, 0), 0).values
    return torch.empty_like(rank).scatter_(0, order, rank)


def _block_positives(first: int, last: int, ranges: list, grids: list[LevelGrid], pairs: _Pairs, floor: Tensor,
                     theta: Tensor, params: "TALParams") -> tuple[Tensor, Tensor, Tensor]:
    """The positives of the slots [first, last): slot, anchor (int64) and IoU (float32), each (K,)."""
    slots, pair_anchors = [], []
    for g, (c0, c1, r0, r1) in zip(grids, ranges):
        width, height = (c1 - c0).clamp(min=0)[first:last], (r1 - r0).clamp(min=0)[first:last]
        cells = rectangle_cells(g, c0[first:last], width, r0[first:last], height)
        slots.append(cells.slot + first)
        pair_anchors.append(cells.anchor)
    slot, anchor = torch.cat(slots), torch.cat(pair_anchors)
    iou = pairs.iou(slot, anchor)
    keep = (~((iou < theta.index_select(0, slot)) | (iou <= 0))).nonzero().squeeze(1)  # a NaN stays
    slot, anchor, iou = (t.index_select(0, keep) for t in (slot, anchor, iou))
    metric = pairs.alignment(slot, anchor, iou)
    # Below the floor a pair is neither a positive nor above one; t = 0 never is (a NaN stays).
    keep = (~((metric < floor.index_select(0, slot)) | (metric <= 0))).nonzero().squeeze(1)
    slot, anchor, iou, metric = (t.index_select(0, keep) for t in (slot, anchor, iou, metric))
    ranked = _rank_in_slot(slot - first, metric) < params.topk
    positive = (ranked & (metric > 0) & pairs.inside(slot, anchor)).nonzero().squeeze(1)
    return slot.index_select(0, positive), anchor.index_select(0, positive), iou.index_select(0, positive)
