"""Backbones: torchvision ResNets cut to their C3-C5 feature maps, and their ImageNet weights."""
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from ..choices import ARCHS
from ..errors import LadError
from ..files import read_torch_file

RESNET_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


class ResNetC3C5(nn.Module):
    """The C3, C4, C5 feature maps (strides 8, 16, 32) of a torchvision ResNet."""

    def __init__(self, arch: str):
        super().__init__()
        if arch not in RESNET_CHANNELS:
            raise LadError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        c5 = RESNET_CHANNELS[arch]
        self.out_channels = (c5 // 4, c5 // 2, c5)
        self.frozen = False

    def forward(self, x: Tensor) -> list[Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]

    def freeze_stem(self) -> None:
        """With pretrained weights: stem and first stage fixed, BatchNorm statistics fixed."""
        self.frozen = True
        for module in (self.stem, self.layer1):
            for p in module.parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetC3C5":
        super().train(mode)
        if self.frozen:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


def load_backbone_weights(backbone: ResNetC3C5, arch: str, weights: str) -> None:
    """`weights` is a local torchvision ResNet state-dict file, or "imagenet" (torchvision's cache)."""
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            state = enum.get_state_dict(progress=False)
        except Exception as exc:  # offline with an empty cache: urllib/OS errors of every kind
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise LadError(
                f"cannot load ImageNet weights for {arch} ({type(exc).__name__}); "
                f"put {Path(enum.url).name} at {cache} or pass --weights PATH"
            ) from None
    else:
        state = read_torch_file(Path(weights), "weights file", "torch state-dict file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LadError(f"{weights}: not a torch state-dict file (a dict of tensors)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = backbone.load_state_dict({_backbone_key(k): v for k, v in state.items()}, strict=False)
    except RuntimeError:  # shape mismatches
        missing, unexpected = ["(tensor shapes differ)"], []
    if missing or unexpected:
        shown = (missing or unexpected)[0]
        raise LadError(f"{weights}: not a {arch} state dict (first mismatched key: {shown})")


_STEM = {"conv1": "0", "bn1": "1"}


def _backbone_key(key: str) -> str:
    """torchvision ResNet key -> ours (conv1/bn1 live in our `stem` Sequential)."""
    head, _, rest = key.partition(".")
    return f"stem.{_STEM[head]}.{rest}" if head in _STEM else key
