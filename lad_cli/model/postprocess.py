"""From head outputs to detections (docs/method.md, "Inference")."""
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..structures import Detections, Predictions
from . import coder


@dataclass(frozen=True)
class InferenceParams:
    score_threshold: float = 0.05
    pre_nms_per_level: int = 1000
    nms_iou: float = 0.6
    max_detections: int = 100
    vote_iou: float = 0.01
    vote_sigma: float = 0.025
    iou_quality: bool = True  # score sqrt(class x IoU branch); False: the class probability alone


def score_voting(kept: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float, min_iou: float) -> Tensor:
    """Each kept box becomes the average of same-class pre-NMS boxes overlapping it,
    weighted by exp(-(1 - IoU)^2 / sigma) x score. (D, 4) -> (D, 4)."""
    iou = box_iou(kept, boxes)
    weight = torch.exp(-((1 - iou) ** 2) / sigma) * scores[None, :]
    weight = weight * ((iou > min_iou) & (kept_labels[:, None] == labels[None, :]))
    return (weight @ boxes) / weight.sum(1, keepdim=True).clamp(min=1e-12)


def postprocess(
    pred: Predictions, anchors: Tensor, num_per_level: list[int], image_hw: list[tuple[int, int]], params: InferenceParams = InferenceParams()
) -> list[Detections]:
    """Detections per image, boxes clipped to each image's own (unpadded) size."""
    scores_all = pred.cls_logits.float().sigmoid()
    if params.iou_quality:
        scores_all = (scores_all * pred.iou_logits.float().sigmoid()[..., None]).sqrt()
    boxes_all = coder.decode(anchors, pred.box_deltas.float())
    out = []
    for n, (h, w) in enumerate(image_hw):
        keep_anchors = []
        for start, count in zip(_starts(num_per_level), num_per_level):
            level_max = scores_all[n, start:start + count].amax(-1)
            top = level_max.topk(min(params.pre_nms_per_level, count)).indices + start
            keep_anchors.append(top)
        idx = torch.cat(keep_anchors)
        scores = scores_all[n, idx]
        anchor_i, label = (scores > params.score_threshold).nonzero(as_tuple=True)
        score = scores[anchor_i, label]
        boxes = boxes_all[n, idx[anchor_i]]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = batched_nms(boxes, score, label, params.nms_iou)[: params.max_detections]
        voted = score_voting(boxes[keep], label[keep], boxes, score, label, params.vote_sigma, params.vote_iou)
        out.append(Detections(voted, score[keep], label[keep]))
    return out


def _starts(counts: list[int]) -> list[int]:
    starts, total = [], 0
    for c in counts:
        starts.append(total)
        total += c
    return starts
