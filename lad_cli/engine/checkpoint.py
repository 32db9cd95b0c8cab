"""Training checkpoints, written atomically (reading them back is `model.build`)."""
import os
import tempfile
from pathlib import Path

import torch

from ..assign.registry import ASSIGNERS
from ..data.coco import CocoSplit
from ..errors import LadError
from ..files import replace_durably
from ..model.build import CHECKPOINT_FORMAT
from ..model.detector import PAADetector

TEMP_GLOB = ".*.tmp"  # save_atomic's temp files; a kill during a save leaves one behind


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, rename, fsync the folder: a kill, a
    power cut or a full disk leaves the old file. A write error (ENOSPC, read-only folder) is
    a LadError."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # torch.save reports its writer's OSError as a RuntimeError whose context is the OSError
        cause = next((e for e in (exc, exc.__context__) if isinstance(e, OSError)), None)
        if cause is None:
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        raise LadError(f"{path}: cannot write the checkpoint ({cause.strerror or cause}); {kept}") from None


def model_checkpoint(net: PAADetector, split: CocoSplit, cfg, training: dict | None = None) -> dict:
    """What `lad eval` and a LAD teacher need: weights, architecture, classes, input size, the
    assigner it trained with (a teacher assigns with it); and `training`, how the network was
    trained (`lad info`)."""
    return {"format": CHECKPOINT_FORMAT, "model": net.state_dict(), "detector": net.config.to_dict(),
            "categories": split.categories, "size": cfg.size, "max_size": cfg.max_size,
            "annotations_sha256": split.sha256, "assigner": ASSIGNERS[cfg.assigner].record(),
            **({"training": training} if training is not None else {})}
