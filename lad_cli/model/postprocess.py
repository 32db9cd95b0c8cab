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
    weighted by exp(-(1 - IoU)^2 / sigma) x score. (D, 4) -> (D, 4).

    A box clipped to nothing (it lay wholly past the image's edge) has IoU 0/0 = NaN with
    another such box: it takes no part (a product with the mask would spread the NaN to every
    box of its class), and a kept box that no box may vote for stays as it is."""
    iou = box_iou(kept, boxes)
    votes = (iou > min_iou) & (kept_labels[:, None] == labels[None, :])
    weight = torch.where(votes, torch.exp(-((1 - iou) ** 2) / sigma) * scores[None, :], 0.0)
    total = weight.sum(1, keepdim=True)
    return torch.where(total > 0, (weight @ boxes) / total.clamp(min=1e-12), kept)


def detection_scores(pred: Predictions, iou_quality: bool = True) -> Tensor:
    """(N, A, C) float32 scores: sqrt(sigmoid(class) x sigmoid(IoU)), or with `iou_quality`
    False the class probability alone."""
    scores = pred.cls_logits.float().sigmoid()
    return (scores * pred.iou_logits.float().sigmoid()[..., None]).sqrt() if iou_quality else scores


def postprocess(
    pred: Predictions, anchors: Tensor, num_per_level: list[int], image_hw: list[tuple[int, int]], params: InferenceParams = InferenceParams()
) -> list[Detections]:
    """Detections per image, boxes clipped to each image's own (unpadded) size."""
    scores_all = detection_scores(pred, params.iou_quality)
    boxes_all = coder.decode(anchors, pred.box_deltas.float())
    return [select_detections(scores_all[n], boxes_all[n], num_per_level, hw, params) for n, hw in enumerate(image_hw)]


def select_detections(scores_all: Tensor, boxes_all: Tensor, num_per_level: list, image_hw: tuple, params: InferenceParams) -> Detections:
    """One image: scores (A, C), decoded boxes (A, 4) -> per-level top-k, score threshold,
    clipping to the image, class-wise NMS, score voting, the cap. The anchor counts and the
    image size are ints, or 0-dim tensors in an exported graph (`lad_cli.export`), which
    traces them from its inputs so that one graph serves every input size."""
    h, w = image_hw
    keep_anchors = []
    for start, count in zip(_starts(num_per_level), num_per_level):
        level_max = scores_all[start:start + count].amax(-1)
        k = count.clamp(max=params.pre_nms_per_level) if isinstance(count, Tensor) else min(params.pre_nms_per_level, count)
        keep_anchors.append(level_max.topk(k).indices + start)
    idx = torch.cat(keep_anchors)
    scores = scores_all[idx]
    anchor_i, label = (scores > params.score_threshold).nonzero(as_tuple=True)
    score = scores[anchor_i, label]
    x1, y1, x2, y2 = boxes_all[idx[anchor_i]].unbind(-1)
    boxes = torch.stack([x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)], -1)
    keep = batched_nms(boxes, score, label, params.nms_iou)[: params.max_detections]
    voted = score_voting(boxes[keep], label[keep], boxes, score, label, params.vote_sigma, params.vote_iou)
    return Detections(voted, score[keep], label[keep])


def _starts(counts: list[int]) -> list[int]:
    starts, total = [], 0
    for c in counts:
        starts.append(total)
        total = total + c  # not +=: a traced count is a tensor, which += would change in `starts`
    return starts
