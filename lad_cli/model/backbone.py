"""Backbones: torchvision ResNets and MobileNets cut to their stride-8/16/32 feature maps
(C3, C4, C5), and their ImageNet weights (docs/method.md, "The detector")."""
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from ..choices import ARCHS
from ..errors import LadError
from ..files import read_torch_file

RESNET_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
# Per MobileNet: the `features` index whose output is C3, C4, C5 (the last inverted-residual
# block of stride 8, 16, 32; the classifier's final 1x1 conv is not used), and how many leading
# blocks make the stride <= 4 stem, frozen with pretrained weights as the ResNet stem + layer1.
MOBILENET_TAPS = {"mobilenet_v2": ((6, 13, 17), 4), "mobilenet_v3_large": ((6, 12, 15), 4)}


class Backbone(nn.Module):
    """C3, C4, C5 (strides 8, 16, 32) of a torchvision classifier; `out_channels` theirs."""

    out_channels: tuple[int, int, int]

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def stem_modules(self) -> list[nn.Module]:
        """The stride <= 4 part, fixed when the backbone starts from pretrained weights."""
        raise NotImplementedError

    def own_key(self, key: str) -> str | None:
        """The name of a torchvision state-dict key in this module; None: a key it does not hold."""
        raise NotImplementedError

    def freeze_stem(self) -> None:
        """With pretrained weights: stem and first stage fixed, BatchNorm statistics fixed."""
        self.frozen = True
        for module in self.stem_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.frozen:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


class ResNetC3C5(Backbone):
    """The C3, C4, C5 feature maps of a torchvision ResNet."""

    def __init__(self, arch: str):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        c5 = RESNET_CHANNELS[arch]
        self.out_channels = (c5 // 4, c5 // 2, c5)

    def forward(self, x: Tensor) -> list[Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]

    def stem_modules(self) -> list[nn.Module]:
        return [self.stem, self.layer1]

    def own_key(self, key: str) -> str | None:
        head, _, rest = key.partition(".")
        if head == "fc":
            return None
        return f"stem.{_RESNET_STEM[head]}.{rest}" if head in _RESNET_STEM else key  # conv1/bn1 live in `stem`


_RESNET_STEM = {"conv1": "0", "bn1": "1"}


class MobileNetC3C5(Backbone):
    """A torchvision MobileNet's `features` up to its last stride-32 inverted-residual block,
    tapped after the last block of each of strides 8, 16, 32."""

    def __init__(self, arch: str):
        super().__init__()
        taps, self.stem_blocks = MOBILENET_TAPS[arch]
        net = getattr(torchvision.models, arch)(weights=None)
        self.features = net.features[: taps[-1] + 1]  # same keys as torchvision's: features.N...
        self.taps = taps
        self.out_channels = tuple(self.features[i].out_channels for i in taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.taps:
                outs.append(x)
        return outs

    def stem_modules(self) -> list[nn.Module]:
        return list(self.features[: self.stem_blocks])

    def own_key(self, key: str) -> str | None:
        parts = key.split(".")
        if parts[0] != "features" or len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) >= len(self.features):
            return None  # the classifier, and the 1x1 conv after the last block
        return key


def build_backbone(arch: str) -> Backbone:
    if arch in RESNET_CHANNELS:
        return ResNetC3C5(arch)
    if arch in MOBILENET_TAPS:
        return MobileNetC3C5(arch)
    raise LadError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")


def load_backbone_weights(backbone: Backbone, arch: str, weights: str) -> None:
    """`weights` is a local torchvision state-dict file of the `arch` classifier, or "imagenet"
    (torchvision's ImageNet-1k V1 weights, from torch's cache or downloaded by torchvision)."""
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
        raise LadError(f"{weights}: not a {arch} state dict (not a dict of tensors)")
    ours = {backbone.own_key(k): v for k, v in state.items()}
    ours.pop(None, None)
    try:
        missing, unexpected = backbone.load_state_dict(ours, strict=False)
    except RuntimeError:  # shape mismatches
        missing, unexpected = ["(tensor shapes differ)"], []
    if missing or unexpected:
        shown = (missing or unexpected)[0]
        raise LadError(f"{weights}: not a {arch} state dict (first mismatched key: {shown})")
