"""Task-aligned and ATSS assignment the slow way: one image, a Python loop over GTs, written
from the definitions (docs/method.md, "Task-aligned assignment", "ATSS warm-up"), with
torchvision's box_iou. Used by the tests and benchmarks/assign_speed.py."""
import torch
from torchvision.ops import box_iou

from lad_cli.model import coder


def _inside(anchors, box, margin=0.01):
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    return torch.stack([cx - box[0], cy - box[1], box[2] - cx, box[3] - cy]).amin(0) > margin


def _smallest_k(values, k):
    """Indices of the k smallest values, ties to the lower index (a stable sort)."""
    return torch.sort(values, stable=True).indices[:k].tolist()


def _resolve(claims, iou, num_anchors):
    """claims: per GT a set of anchor indices -> (A,) GT of highest IoU (ties: lower GT), else -1."""
    matched = torch.full((num_anchors,), -1, dtype=torch.int64)
    best = {}
    for g, anchors in enumerate(claims):
        for a in anchors:
            if a not in best or iou[g, a] > iou[best[a], a]:
                best[a] = g
    for a, g in best.items():
        matched[a] = g
    return matched


def reference_tal(anchors, cls_logits, box_deltas, gt_boxes, gt_labels, topk=13, alpha=1, beta=6):
    """One image: anchors (A, 4), cls_logits (A, C), box_deltas (A, 4), gt_boxes (M, 4),
    gt_labels (M,) -> (A,) int64 GT index or -1."""
    boxes = coder.decode(anchors, box_deltas.float())
    scores = cls_logits.float().sigmoid()
    iou = box_iou(gt_boxes, boxes)  # (M, A)
    claims = []
    for g in range(len(gt_boxes)):
        t = scores[:, gt_labels[g]] ** alpha * iou[g] ** beta
        top = _smallest_k(-t, topk)
        inside = _inside(anchors, gt_boxes[g])
        claims.append({a for a in top if t[a] > 0 and inside[a]})
    return _resolve(claims, iou, len(anchors))


def reference_atss(anchors, num_per_level, gt_boxes, topk=9):
    """One image: anchors (A, 4), gt_boxes (M, 4) -> (A,) int64 GT index or -1."""
    iou = box_iou(gt_boxes, anchors)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    claims = []
    for g in range(len(gt_boxes)):
        distance = ((centres - (gt_boxes[g, :2] + gt_boxes[g, 2:]) / 2) ** 2).sum(-1).sqrt()
        candidates, start = [], 0
        for count in num_per_level:
            candidates += [start + i for i in _smallest_k(distance[start:start + count], topk)]
            start += count
        values = iou[g, candidates]
        threshold = values.mean() + values.std()
        inside = _inside(anchors, gt_boxes[g])
        claims.append({a for a in candidates if iou[g, a] >= threshold and inside[a]})
    return _resolve(claims, iou, len(anchors))
