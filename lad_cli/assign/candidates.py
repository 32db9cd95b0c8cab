"""PAA's candidate step: which GT each anchor is a candidate of (docs/method.md, "PAA
assignment", step 1), from the IoU of every anchor with every GT.

Two ways to the same answer, bit for bit. On CUDA, for small inputs, or for anchors that are
not a grid, the IoUs are computed densely for a block of GTs at a time (memory bounded
whatever N x M x A). On the CPU at COCO size, where that dense matrix dominated the whole
assignment, anchors laid out as `AnchorLayout` lays them (per level a row-major grid whose
boxes take their x from their column and their y from their row) are searched per GT and
level in the rectangle of cells that overlap the GT: a few percent of the pairs. The cells of
such per-GT rectangles are enumerated by `rectangle_cells`, which the task-aligned assigner's
grid path (`assign/tal_grid.py`) shares.

Shapes: N images, M GT slots, A anchors, P (image, GT, anchor) pairs.
"""
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.boxes import area, pairwise_iou
from ..structures import Targets

# IoU pairs computed at once by the dense search: bounds its memory (64 MB of float32
# temporaries at most) for any number of images x GTs x anchors, by taking the GTs in blocks.
_PAIRS_PER_BLOCK = 1 << 22


def find_candidates(anchors: Tensor, targets: Targets, candidate_iou: float) -> Tensor:
    """(A, 4) anchors -> (N, A) int64: the GT index each anchor is a candidate of, -1 for none.

    Max-IoU matching at `candidate_iou` (ties to the lower GT index), then each GT in order
    takes the anchors tied at its highest IoU (a later GT overrides an earlier one). A GT that
    overlaps no anchor at all gets no candidate (the reference would hand it every anchor).
    """
    n, m = targets.labels.shape
    small = n * m * anchors.shape[0] <= _PAIRS_PER_BLOCK  # one block: the dense search is as fast
    grids = None if small or anchors.device.type != "cpu" else level_grids(anchors)
    if grids is None:
        return _dense_candidates(anchors, targets, candidate_iou)
    return _grid_candidates(anchors, grids, targets, candidate_iou)


def _dense_candidates(anchors: Tensor, targets: Targets, candidate_iou: float) -> Tensor:
    n, m = targets.labels.shape
    a = anchors.shape[0]
    best_iou = torch.full((n, a), -1.0, device=anchors.device)
    best_gt = torch.zeros((n, a), dtype=torch.int64, device=anchors.device)
    last_claim = torch.full((n, a), -1, dtype=torch.int64, device=anchors.device)
    block = max(1, _PAIRS_PER_BLOCK // max(1, n * a))
    for g0 in range(0, m, block):
        gts = slice(g0, min(m, g0 + block))
        iou = pairwise_iou(targets.boxes[:, gts].float(), anchors)  # (N, G, A)
        iou = torch.where(targets.valid[:, gts, None], iou, -1.0)
        block_best, block_gt = iou.max(dim=1)  # the first GT of the block among ties
        better = block_best > best_iou  # strictly: an earlier block's GT keeps a tie
        best_iou = torch.where(better, block_best, best_iou)
        best_gt = torch.where(better, block_gt + g0, best_gt)
        gt_best = iou.amax(dim=2, keepdim=True)
        is_gt_best = (iou == gt_best) & (gt_best > 0)
        gt_index = torch.arange(gts.start, gts.stop, device=anchors.device)[None, :, None]
        claim = torch.where(is_gt_best, gt_index, -1).amax(dim=1)
        last_claim = torch.where(claim >= 0, claim, last_claim)  # later blocks hold later GTs
    cand = torch.where(best_iou >= candidate_iou, best_gt, -1)
    return torch.where(last_claim >= 0, last_claim, cand)


@dataclass(frozen=True)
class LevelGrid:
    """One level's anchors: `len(y1) x len(x1)` boxes from index `start` on, row-major, the box
    of cell (r, c) being exactly [x1[c], y1[r], x2[c], y2[r]] (ascending coordinates)."""

    start: int
    x1: Tensor
    x2: Tensor
    y1: Tensor
    y2: Tensor

    @property
    def cols(self) -> int:
        return len(self.x1)


def level_grids(anchors: Tensor) -> list[LevelGrid] | None:
    """The anchors (on the CPU) as a sequence of row-major grids, one per level, each box's x
    coordinates those of its column and y those of its row exactly; None if they are not
    laid out so. A level ends where the box size changes."""
    grids, start, total = [], 0, anchors.shape[0]
    sizes = anchors[:, 2:] - anchors[:, :2]
    while start < total:
        same = (sizes[start:] == sizes[start]).all(1)
        count = total - start if same.all() else int(same.long().argmin())
        level = anchors[start:start + count]
        cols = int((level[:, 1] == level[0, 1]).long().cumprod(0).sum())
        if count % cols:
            return None
        cells = level.view(count // cols, cols, 4)
        grid = LevelGrid(start, *(v.contiguous() for v in (cells[0, :, 0], cells[0, :, 2], cells[:, 0, 1], cells[:, 0, 3])))
        separable = (cells[..., 0::2] == cells[:1, :, 0::2]).all() and (cells[..., 1::2] == cells[:, :1, 1::2]).all()
        ascending = all(bool((v[1:] > v[:-1]).all()) for v in (grid.x1, grid.x2, grid.y1, grid.y2))
        if not (separable and ascending):
            return None
        grids.append(grid)
        start += count
    return grids or None


def _overlapping(lo: Tensor, hi: Tensor, starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """[first, end) of the cells [starts[i], ends[i]] (both ascending) that overlap (lo, hi)
    with positive length: ends[i] > lo and starts[i] < hi."""
    return torch.searchsorted(ends, lo, right=True), torch.searchsorted(starts, hi)


def _extent(lo: Tensor, hi: Tensor, starts: Tensor, ends: Tensor, first: Tensor, count: Tensor) -> Tensor:
    """Each slot's overlaps (min(hi, end) - max(lo, start)).clamp(0) with its `count` cells
    from `first` on, concatenated: (sum of count,) float32 (`pairwise_iou`'s arithmetic)."""
    slot = torch.repeat_interleave(torch.arange(len(count)), count)
    cell = _at(first, slot) + torch.arange(len(slot)) - _at(torch.cumsum(count, 0) - count, slot)
    return (torch.minimum(_at(hi, slot), _at(ends, cell)) - torch.maximum(_at(lo, slot), _at(starts, cell))).clamp_(min=0)


def _grid_pairs(anchors: Tensor, grids: list[LevelGrid], targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
    """Every (GT slot, anchor) whose boxes overlap with positive area and their IoU: (P,) int64,
    (P,) int64, (P,) float32; the slot is flat over (image, GT). The IoU is the dense matrix's
    bit for bit: the same operations on the same values, the overlap widths per (slot,
    column) and heights per (slot, row) computed once."""
    boxes = targets.boxes.float().reshape(-1, 4)  # (N x M, 4)
    x1, y1, x2, y2 = (boxes[:, i].contiguous() for i in range(4))
    box_area, anchor_area = area(boxes), area(anchors)
    valid = targets.valid.reshape(-1)
    slots, pair_anchors, ious = [], [], []
    for g in grids:
        c0, c1 = _overlapping(x1, x2, g.x1, g.x2)
        r0, r1 = _overlapping(y1, y2, g.y1, g.y2)
        width, height = (c1 - c0).clamp(min=0) * valid, (r1 - r0).clamp(min=0) * valid
        iw, ih = _extent(x1, x2, g.x1, g.x2, c0, width), _extent(y1, y2, g.y1, g.y2, r0, height)
        cells = rectangle_cells(g, c0, width, r0, height)
        inter = _at(iw, cells.column).mul_(_at(ih, cells.row))
        union = (_at(box_area, cells.slot) + _at(anchor_area, cells.anchor)).sub_(inter)
        ious.append(inter.div_(union.clamp_(min=torch.finfo(inter.dtype).eps)))
        slots.append(cells.slot)
        pair_anchors.append(cells.anchor)
    return torch.cat(slots), torch.cat(pair_anchors), torch.cat(ious)


@dataclass
class RectangleCells:
    """The cells of per-slot rectangles of one level's grid as flat pairs, each (P,) int64: the
    slot, the anchor, and the cell's position in the slots' concatenated column lists and row
    lists (to gather values computed once per (slot, column) or per (slot, row))."""

    slot: Tensor
    anchor: Tensor
    column: Tensor
    row: Tensor


def rectangle_cells(grid: LevelGrid, c0: Tensor, width: Tensor, r0: Tensor, height: Tensor) -> RectangleCells:
    """Every cell of each slot's rectangle, `height` rows from row r0 and `width` columns from
    column c0 (each (S,) int64, width and height >= 0): slot by slot, row-major within a slot,
    so the anchors of a slot ascend."""
    # One run of consecutive anchors per (slot, row): [row start + c0, + width).
    run_slot = torch.repeat_interleave(torch.arange(len(c0)), height)
    run = torch.arange(len(run_slot))
    run_row = _at(r0, run_slot) + run - _at(torch.cumsum(height, 0) - height, run_slot)
    run_len = _at(width, run_slot)
    pair_run = torch.repeat_interleave(run, run_len)
    step = torch.arange(len(pair_run)) - _at(torch.cumsum(run_len, 0) - run_len, pair_run)
    slot = _at(run_slot, pair_run)
    anchor = _at(grid.start + run_row * grid.cols + _at(c0, run_slot), pair_run) + step
    return RectangleCells(slot, anchor, _at(torch.cumsum(width, 0) - width, slot) + step, pair_run)


def _grid_candidates(anchors: Tensor, grids: list[LevelGrid], targets: Targets, candidate_iou: float) -> Tensor:
    n, m = targets.labels.shape
    a = anchors.shape[0]
    slot, anchor, iou = _grid_pairs(anchors, grids, targets)
    gt_best = torch.zeros(n * m).scatter_reduce_(0, slot, iou, "amax")
    claims = ((iou == _at(gt_best, slot)) & (iou > 0)).nonzero().squeeze(1)
    # Max-IoU matching only matters where the best IoU reaches the threshold.
    matched = (iou >= candidate_iou).nonzero().squeeze(1)
    last_claim = torch.full((n * a,), -1).scatter_reduce_(0, _flat(slot, anchor, claims, m, a), _at(slot, claims) % m, "amax")
    at, gt, iou = _flat(slot, anchor, matched, m, a), _at(slot, matched) % m, _at(iou, matched)
    best_iou = torch.full((n * a,), -1.0).scatter_reduce_(0, at, iou, "amax")
    tied = (iou == _at(best_iou, at)).nonzero().squeeze(1)
    best_gt = torch.full((n * a,), m).scatter_reduce_(0, _at(at, tied), _at(gt, tied), "amin")
    cand = torch.where(best_iou >= candidate_iou, best_gt, -1)
    return torch.where(last_claim >= 0, last_claim, cand).view(n, a)


def _flat(slot: Tensor, anchor: Tensor, pairs: Tensor, m: int, a: int) -> Tensor:
    """Flat (image, anchor) index of the chosen pairs."""
    return _at(slot, pairs) // m * a + _at(anchor, pairs)


def _at(values: Tensor, index: Tensor) -> Tensor:
    """values[index] for a 1-D int64 index: index_select, several times faster on the CPU
    than advanced indexing for these long gathers."""
    return values.index_select(0, index)
