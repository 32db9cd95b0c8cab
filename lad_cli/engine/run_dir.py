"""The run folder: config.json, metrics.jsonl, last.pt, best.pt (and the peer's in co-learning)."""
import json
import shutil
from pathlib import Path

from ..errors import LadError
from ..files import replace_durably
from .checkpoint import TEMP_GLOB

RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "peer_last.pt", "peer_best.pt")
CHECKPOINTS = ("last.pt", "best.pt", "peer_last.pt", "peer_best.pt")


def prepare(out: Path, resume: bool, overwrite: bool) -> Path:
    """Refuse to clobber a run silently: an existing run needs --resume or --overwrite.

    A run exists once it saved a checkpoint or logged a step; a folder holding only the
    config.json of a start that failed (a bad option, bad data) is reused."""
    out = Path(out)
    if resume and overwrite:
        raise LadError("--resume and --overwrite exclude each other")
    metrics = out / "metrics.jsonl"
    existing = out.is_dir() and (any((out / f).exists() for f in CHECKPOINTS)
                                 or (metrics.exists() and metrics.stat().st_size > 0))
    if resume:
        if not (out / "last.pt").is_file():
            raise LadError(f"{out}: nothing to resume (no last.pt)")
        for leftover in out.glob(TEMP_GLOB):  # a save that a kill interrupted
            leftover.unlink(missing_ok=True)
        return out
    if existing and not overwrite:
        raise LadError(f"{out}: a run is already there; pass --resume to continue it or --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise LadError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for target in [*(out / name for name in RUN_FILES), *out.glob(TEMP_GLOB)]:
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


def read_config(out: Path) -> dict | None:
    """The run's config.json (None when there is none: the copy in last.pt is then the run's)."""
    path = Path(out) / "config.json"
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError: malformed json or bytes
        raise LadError(f"{path}: unreadable ({type(exc).__name__}); restore it, or delete it to resume with "
                       "the copy in last.pt") from None
    if not isinstance(config, dict):
        raise LadError(f"{path}: not a run configuration")
    return config


def write_config(out: Path, config: dict) -> None:
    """config.json, written to a temp file and renamed, so that it is whole or absent."""
    path = Path(out) / "config.json"
    staged = path.with_name(f".{path.name}.tmp")
    try:
        staged.write_text(json.dumps(config, indent=2) + "\n")
        replace_durably(staged, path)
    except OSError as exc:
        raise LadError(f"{path}: cannot write ({exc.strerror})") from None


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step and per epoch, flushed as written."""

    def __init__(self, path: Path, keep_lines: int | None = None):
        """keep_lines: on resume, the line count the checkpoint saw; later lines are logged again."""
        self.path = Path(path)
        self.lines = 0
        try:
            if keep_lines is not None and self.path.exists():
                kept = self.path.read_text().splitlines()[:keep_lines]
                staged = self.path.with_name(f".{self.path.name}.resume.tmp")  # a kill here keeps the old log
                staged.write_text("".join(line + "\n" for line in kept))
                replace_durably(staged, self.path)
                self.lines = len(kept)
            self.file = open(self.path, "a")
        except OSError as exc:
            raise LadError(f"{self.path}: cannot write ({exc.strerror})") from None

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as exc:
            raise LadError(f"{self.path}: cannot write ({exc.strerror}); the checkpoints are kept") from None
        self.lines += 1

    def close(self) -> None:
        self.file.close()
