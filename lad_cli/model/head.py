"""The PAA head: class and box towers, then class logits, box deltas and an IoU logit."""
import math

import torch
from torch import Tensor, nn


class Scale(nn.Module):
    """A learnable scalar per pyramid level on the box deltas (ATSS/PAA)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(width: int, depth: int) -> nn.Sequential:
    # 8 channels per GroupNorm group, as GN(32) on the reference's 256 channels.
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(max(1, min(32, width // 8)), width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PAAHead(nn.Module):
    """Shared across levels. Outputs, flattened level by level in row-major order:
    cls_logits (N, A, C), box_deltas (N, A, 4), iou_logits (N, A)."""

    def __init__(self, num_classes: int, width: int, depth: int, num_levels: int, prior: float = 0.01):
        super().__init__()
        self.cls_tower = _tower(width, depth)
        self.box_tower = _tower(width, depth)
        self.cls_out = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(width, 4, 3, padding=1)
        self.iou_out = nn.Conv2d(width, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        cls, box, iou = [], [], []
        for feat, scale in zip(feats, self.scales):
            n = feat.shape[0]
            c = self.cls_tower(feat)
            b = self.box_tower(feat)
            cls.append(self.cls_out(c).permute(0, 2, 3, 1).reshape(n, -1, self.cls_out.out_channels))
            box.append(scale(self.box_out(b)).permute(0, 2, 3, 1).reshape(n, -1, 4))
            iou.append(self.iou_out(b).reshape(n, -1))
        return torch.cat(cls, 1), torch.cat(box, 1), torch.cat(iou, 1)
