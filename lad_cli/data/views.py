"""Views: the exact geometric transform a network sees an image through.

A view is a resize (shorter side to `short_side`, longer side capped at `max_side`)
and an optional horizontal flip; normalisation and padding (bottom/right, to a
multiple of the largest stride) follow. The same (image, view) always gives the same
tensor, boxes and padded shape, so assignments can be cached per (image, view).
Names: "orig" and "flip" at the run's size, or "orig@S" / "flip@S" at shorter side S.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..choices import view_names
from ..errors import LadError

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class View:
    name: str
    short_side: int
    max_side: int
    flip: bool

    def to_dict(self) -> dict:
        return asdict(self)


def parse_views(spec: str, short_side: int, max_side: int) -> list[View]:
    try:
        names = view_names(spec)
    except ValueError as exc:
        raise LadError(str(exc)) from None
    views = []
    for name in names:
        kind, _, size = name.partition("@")
        short = int(size) if size else short_side
        views.append(View(name, short, max(max_side, short) if size else max_side, kind == "flip"))
    return views


def resized_hw(height: int, width: int, view: View) -> tuple[int, int]:
    scale = min(view.short_side / min(height, width), view.max_side / max(height, width))
    return int(round(height * scale)), int(round(width * scale))


def padded_hw(height: int, width: int, divisor: int) -> tuple[int, int]:
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def apply_view(image: Tensor, boxes: np.ndarray, crowd: np.ndarray, view: View) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 (3, H, W) image and its xyxy boxes -> normalised float32 (3, h, w) image, boxes, crowd."""
    h, w = image.shape[-2:]
    nh, nw = resized_hw(h, w, view)
    out = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    out = (out - out.new_tensor(MEAN)[:, None, None]) / out.new_tensor(STD)[:, None, None]
    scale = torch.tensor([nw / w, nh / h, nw / w, nh / h])
    boxes_t = torch.from_numpy(boxes) * scale
    crowd_t = torch.from_numpy(crowd) * scale
    if view.flip:
        out = out.flip(-1)
        boxes_t, crowd_t = flip_boxes(boxes_t, nw), flip_boxes(crowd_t, nw)
    return out.contiguous(), boxes_t, crowd_t


def flip_boxes(boxes: Tensor, width: float) -> Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=-1)


def to_original(boxes: Tensor, height: int, width: int, view: View) -> Tensor:
    """Boxes in view pixels -> boxes in the original image's pixels."""
    nh, nw = resized_hw(height, width, view)
    if view.flip:
        boxes = flip_boxes(boxes, nw)
    return boxes * boxes.new_tensor([width / nw, height / nh, width / nw, height / nh])
