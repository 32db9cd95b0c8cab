"""The shared vocabulary: ground truth, network outputs, detections, assignment codes.

Imports nothing of lad_cli; every layer may import it. Shapes: N images, A anchors, M GT
slots, K crowd slots, C classes, D detections.

An assignment is torchvision's `matched_idxs`: (N, A) int64, the GT index of each anchor,
BACKGROUND or IGNORE. Everything a loss needs follows from it, the GT and the anchors.
"""
from dataclasses import dataclass

import torch
from torch import Tensor

BACKGROUND = -1
IGNORE = -2


@dataclass
class Targets:
    """GT of N images. boxes (N, M, 4) float32 xyxy in input pixels; labels (N, M) int64
    contiguous class labels; valid (N, M) bool (False in padding slots); crowd_boxes
    (N, K, 4) and crowd_valid (N, K): iscrowd regions, which are never matched.
    GT index m of image n is the m-th non-crowd annotation of that image, in file order.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor
    crowd_boxes: Tensor
    crowd_valid: Tensor

    @staticmethod
    def from_lists(boxes: list[Tensor], labels: list[Tensor], crowd: list[Tensor]) -> "Targets":
        n = len(boxes)
        # At least one (invalid) slot, so that gathers by GT index work on GT-less batches.
        m = max([1] + [len(b) for b in boxes])
        k = max((len(c) for c in crowd), default=0)
        out = Targets(
            boxes=torch.zeros(n, m, 4),
            labels=torch.zeros(n, m, dtype=torch.int64),
            valid=torch.zeros(n, m, dtype=torch.bool),
            crowd_boxes=torch.zeros(n, k, 4),
            crowd_valid=torch.zeros(n, k, dtype=torch.bool),
        )
        for i, (b, lab, c) in enumerate(zip(boxes, labels, crowd)):
            out.boxes[i, : len(b)] = b
            out.labels[i, : len(b)] = lab
            out.valid[i, : len(b)] = True
            out.crowd_boxes[i, : len(c)] = c
            out.crowd_valid[i, : len(c)] = True
        return out

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Targets":
        return Targets(*(t.to(device, non_blocking=non_blocking) for t in self.__dict__.values()))

    def pin_memory(self) -> "Targets":
        return Targets(*(t.pin_memory() for t in self.__dict__.values()))


@dataclass
class Predictions:
    """Head outputs of N images: cls_logits (N, A, C), box_deltas (N, A, 4), iou_logits (N, A)."""

    cls_logits: Tensor
    box_deltas: Tensor
    iou_logits: Tensor


@dataclass
class Detections:
    """One image's detections: boxes (D, 4) xyxy in input pixels, scores (D,), labels (D,)
    int64 contiguous."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
