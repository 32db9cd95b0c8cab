"""The run folder: config.json, metrics.jsonl, last.pt, best.pt (and the peer's in co-learning)."""
import json
import shutil
from pathlib import Path

from ..errors import LadError

RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "peer_last.pt", "peer_best.pt")


def prepare(out: Path, resume: bool, overwrite: bool) -> Path:
    """Refuse to clobber a run silently: an existing run needs --resume or --overwrite."""
    out = Path(out)
    if resume and overwrite:
        raise LadError("--resume and --overwrite exclude each other")
    existing = out.is_dir() and any((out / f).exists() for f in RUN_FILES)
    if resume:
        if not (out / "last.pt").is_file():
            raise LadError(f"{out}: nothing to resume (no last.pt)")
        return out
    if existing and not overwrite:
        raise LadError(f"{out}: a run is already there; pass --resume to continue it or --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise LadError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LadError(f"{out}: cannot write the run folder ({exc.strerror})") from None
    return out


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step and per epoch, flushed as written."""

    def __init__(self, path: Path, keep_lines: int | None = None):
        """keep_lines: on resume, the line count the checkpoint saw; later lines are logged again."""
        self.path = Path(path)
        self.lines = 0
        if keep_lines is not None and self.path.exists():
            kept = self.path.read_text().splitlines()[:keep_lines]
            self.path.write_text("".join(line + "\n" for line in kept))
            self.lines = len(kept)
        self.file = open(self.path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.lines += 1

    def close(self) -> None:
        self.file.close()
