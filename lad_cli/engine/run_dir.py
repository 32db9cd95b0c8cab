"""The run folder: config.json, metrics.jsonl, last.pt, best.pt (and the peer's in co-learning)."""
import json
from pathlib import Path

from ..errors import LadError
from ..outputs import RUN_FOLDER, Claim, is_run_folder, write_text
from ..outputs import claim as claim_output

CHECKPOINTS = ("last.pt", "best.pt", "peer_last.pt", "peer_best.pt")


def prepare(out: Path, resume: bool, overwrite: bool, inputs=()) -> Claim:
    """The run folder claimed for this run (`outputs.claim`): a new one is written in place;
    a run replaced with --overwrite is trained beside it and swapped in when it ends (a
    failed or killed run leaves the old one whole); --resume continues the run in place, or
    the replacement a kill interrupted. A folder holding only the config.json of a start
    that failed (a bad option, bad data) is replaced without --overwrite."""
    out = Path(out)
    if resume and overwrite:
        raise LadError("--resume and --overwrite exclude each other")
    failed_start = is_run_folder(out) and not _has_run_data(out)
    claim = claim_output(out, RUN_FOLDER, overwrite or failed_start, inputs, resume=resume, stage_new=False,
                         hint="--resume to continue it or ")
    if resume and not (claim.where / "last.pt").is_file():
        claim.release()
        raise LadError(f"{out}: nothing to resume (no last.pt)")
    for leftover in claim.where.glob(".*.partial"):  # a save that a kill interrupted
        leftover.unlink(missing_ok=True)
    return claim


def _has_run_data(out: Path) -> bool:
    metrics = out / "metrics.jsonl"
    return any((out / f).exists() for f in CHECKPOINTS) or (metrics.exists() and metrics.stat().st_size > 0)


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
    """config.json, whole or absent (`outputs.write_text`)."""
    write_text(Path(out) / "config.json", json.dumps(config, indent=2) + "\n")


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step and per epoch, flushed as written."""

    def __init__(self, path: Path, keep_lines: int | None = None):
        """keep_lines: on resume, the line count the checkpoint saw: the log is cut back to
        them (later lines are logged again). A log cut short or ending mid-line (a power cut)
        keeps its whole records up to the first broken one; `lost` counts the lines the
        checkpoint saw that are gone (they cannot be logged again)."""
        self.path = Path(path)
        self.lines, self.lost = 0, 0
        try:
            if keep_lines is not None:
                kept = self.whole_records(self.path.read_bytes() if self.path.exists() else b"")[:keep_lines]
                write_text(self.path, "".join(line + "\n" for line in kept))  # a kill here keeps the old log
                self.lines, self.lost = len(kept), keep_lines - len(kept)
            self.file = open(self.path, "a")
        except OSError as exc:
            raise LadError(f"{self.path}: cannot write ({exc.strerror})") from None

    @staticmethod
    def whole_records(data: bytes) -> list[str]:
        """The leading lines that are whole JSON objects, up to the first that is not (a line
        cut mid-way, or the zeros a power cut can leave at the end of a file)."""
        records = []
        for raw in data.split(b"\n"):
            try:
                line = raw.decode()
                whole = isinstance(json.loads(line), dict)
            except ValueError:  # json's JSONDecodeError, UnicodeDecodeError
                whole = False
            if not whole:
                break
            records.append(line)
        return records

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as exc:
            raise LadError(f"{self.path}: cannot write ({exc.strerror}); the checkpoints are kept") from None
        self.lines += 1

    def close(self) -> None:
        self.file.close()
