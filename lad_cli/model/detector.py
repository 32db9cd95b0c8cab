"""The PAA detector: backbone -> FPN -> head, plus its anchor layout."""
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch
from torch import Tensor, nn

from ..structures import Predictions
from .anchors import AnchorLayout
from .backbone import build_backbone
from .fpn import FPN
from .head import PAAHead


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild the network; the defaults are the paper's full size."""

    arch: str = "resnet50"
    num_classes: int = 80
    width: int = 256  # FPN and head channels
    head_depth: int = 4  # convs per head tower
    layout: AnchorLayout = field(default_factory=AnchorLayout)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "DetectorConfig":
        return DetectorConfig(**{**d, "layout": AnchorLayout.from_dict(d["layout"])})


class PAADetector(nn.Module):
    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.arch)
        self.fpn = FPN(self.backbone.out_channels, config.width)
        self.head = PAAHead(config.num_classes, config.width, config.head_depth, len(config.layout.strides))

    def forward(self, images: Tensor) -> Predictions:
        """images (N, 3, H, W), normalised and padded to a multiple of the largest stride."""
        return Predictions(*self.head(self.fpn(self.backbone(images))))

    def anchors(self, padded_hw: tuple[int, int], device: torch.device) -> tuple[Tensor, list[int]]:
        """(A, 4) anchors and the anchor count per level for this padded input shape."""
        return _anchors(self.config.layout, tuple(padded_hw), str(device))


@lru_cache(maxsize=64)
def _anchors(layout: AnchorLayout, padded_hw: tuple[int, int], device: str) -> tuple[Tensor, list[int]]:
    return layout.anchors(padded_hw, device), layout.num_per_level(padded_hw)
