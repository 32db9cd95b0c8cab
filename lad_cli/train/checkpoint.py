"""Checkpoints: written atomically, read with one-line errors, rebuilt into networks."""
import os
import tempfile
from pathlib import Path

import torch

from ..errors import LadError
from ..model.detector import DetectorConfig, PAADetector

FORMAT = "lad-checkpoint/1"


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, rename: a kill leaves the old file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def build_detector(ckpt: dict, path: Path, key: str = "model") -> PAADetector:
    """The network stored under `key`, with its weights; a mismatch is a LadError."""
    config = DetectorConfig.from_dict(ckpt["detector" if key == "model" else f"{key}_detector"])
    model = PAADetector(config)
    try:
        model.load_state_dict(ckpt[key])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise LadError(f"{path}: weights do not fit a {config.arch} detector ({first[:120]})") from None
    return model
