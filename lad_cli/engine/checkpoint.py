"""Training checkpoints, written atomically (reading them back is `model.build`)."""
from pathlib import Path

import torch

from ..assign.registry import ASSIGNERS
from ..data.coco import CocoSplit
from ..model.build import CHECKPOINT_FORMAT
from ..model.detector import PAADetector
from ..outputs import write_file


def save_atomic(obj: dict, path: Path) -> None:
    """A checkpoint written whole or not at all (`outputs.write_file`): a kill, a power cut or
    a full disk leaves the old file; a write error (ENOSPC, read-only folder) is a LadError."""
    def write(partial: Path) -> None:
        with open(partial, "wb") as f:
            torch.save(obj, f)
    write_file(Path(path), write, "the checkpoint")


def model_checkpoint(net: PAADetector, split: CocoSplit, cfg, training: dict | None = None) -> dict:
    """What `lad eval` and a LAD teacher need: weights, architecture, classes, input size, the
    assigner it trained with (a teacher assigns with it); and `training`, how the network was
    trained (`lad info`)."""
    return {"format": CHECKPOINT_FORMAT, "model": net.state_dict(), "detector": net.config.to_dict(),
            "categories": split.categories, "size": cfg.size, "max_size": cfg.max_size,
            "annotations_sha256": split.sha256, "assigner": ASSIGNERS[cfg.assigner].record(),
            **({"training": training} if training is not None else {})}
