"""A detector from a configuration or from a checkpoint: what training, evaluation, the
teacher and the pictures all need. A checkpoint is read with one-line errors."""
from pathlib import Path

import torch

from ..errors import LadError
from .anchors import AnchorLayout
from .backbone import load_backbone_weights
from .detector import DetectorConfig, PAADetector

CHECKPOINT_FORMAT = "lad-checkpoint/1"


def new_detector(arch: str, num_classes: int, width: int, head_depth: int, weights: str | None,
                 anchor_scale: int = 8) -> PAADetector:
    """A fresh detector; with backbone weights, its stem is frozen and BatchNorm fixed."""
    net = PAADetector(DetectorConfig(arch, num_classes, width, head_depth, AnchorLayout(octave_base_scale=anchor_scale)))
    if weights:
        load_backbone_weights(net.backbone, arch, weights)
        net.backbone.freeze_stem()
    return net


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LadError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LadError(f"{path}: unreadable checkpoint, truncated or not a lad checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LadError(f"{path}: not a lad checkpoint")
    return ckpt


def build_detector(ckpt: dict, path: Path) -> PAADetector:
    """The checkpoint's network with its weights; a mismatch is a LadError."""
    config = DetectorConfig.from_dict(ckpt["detector"])
    model = PAADetector(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise LadError(f"{path}: weights do not fit a {config.arch} detector ({first[:120]})") from None
    return model


def load_detector(path: Path) -> tuple[PAADetector, dict]:
    """The network of a checkpoint file and the checkpoint itself (categories, input size)."""
    ckpt = load_checkpoint(path)
    return build_detector(ckpt, Path(path)), ckpt
