"""Box geometry on (x1, y1, x2, y2) tensors, batched with broadcasting."""
import torch
from torch import Tensor


def area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: (..., P, 4) x (..., Q, 4) -> (..., P, Q); leading dims broadcast.

    Same convention and arithmetic as torchvision.ops.box_iou (no +1 on widths); x and y
    are handled apart to avoid (..., P, Q, 2) temporaries.
    """
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = (area(boxes1)[..., :, None] + area(boxes2)[..., None, :]).sub_(inter)
    return inter.div_(union.clamp_(min=torch.finfo(inter.dtype).eps))


def pairwise_iof(regions: Tensor, boxes: Tensor) -> Tensor:
    """Fraction of each box covered by each region: (..., P, 4) x (..., Q, 4) -> (..., P, Q)."""
    lt = torch.maximum(regions[..., :, None, :2], boxes[..., None, :, :2])
    rb = torch.minimum(regions[..., :, None, 2:], boxes[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / area(boxes)[..., None, :].clamp(min=torch.finfo(inter.dtype).eps)


def aligned_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding boxes: (..., 4) x (..., 4) -> (...)."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(boxes1) + area(boxes2) - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).eps)
