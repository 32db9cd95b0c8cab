"""Checkpoints: written atomically, read with one-line errors, rebuilt into networks."""
import os
import tempfile
from pathlib import Path

import torch

from ..data.coco import CocoSplit
from ..errors import LadError
from ..model.anchors import AnchorLayout
from ..model.backbone import load_backbone_weights
from ..model.detector import DetectorConfig, PAADetector

FORMAT = "lad-checkpoint/1"
TEMP_GLOB = ".*.tmp"  # save_atomic's temp files; a kill during a save leaves one behind


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, rename: a kill or a full disk leaves
    the old file. A write error (ENOSPC, read-only folder) is a LadError."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # torch.save reports its writer's OSError as a RuntimeError whose context is the OSError
        cause = next((e for e in (exc, exc.__context__) if isinstance(e, OSError)), None)
        if cause is None:
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        raise LadError(f"{path}: cannot write the checkpoint ({cause.strerror or cause}); {kept}") from None


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LadError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LadError(f"{path}: unreadable checkpoint, truncated or not a lad checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
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


def new_detector(arch: str, num_classes: int, width: int, head_depth: int, weights: str | None,
                 anchor_scale: int = 8) -> PAADetector:
    """A fresh detector; with backbone weights, its stem is frozen and BatchNorm fixed."""
    net = PAADetector(DetectorConfig(arch, num_classes, width, head_depth, AnchorLayout(octave_base_scale=anchor_scale)))
    if weights:
        load_backbone_weights(net.backbone, arch, weights)
        net.backbone.freeze_stem()
    return net


def model_checkpoint(net: PAADetector, split: CocoSplit, cfg) -> dict:
    """What `lad eval` and a LAD teacher need: weights, architecture, classes, input size."""
    return {"format": FORMAT, "model": net.state_dict(), "detector": net.config.to_dict(),
            "categories": split.categories, "size": cfg.size, "max_size": cfg.max_size,
            "annotations_sha256": split.sha256}
