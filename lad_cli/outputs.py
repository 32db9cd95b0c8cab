"""Writing outputs: the one policy for everything lad writes (run folders, caches, predict
folders, exported files, datasets, JSON results).

- `--overwrite` replaces only what lad recognises as its own output of that kind; anything
  else at the path is refused, and the refusal never suggests a flag that would delete it.
- An output equal to, inside, or holding one of the command's inputs is refused.
- A replacement is written beside the old output and swapped in once complete, so a failed,
  killed or concurrent run leaves the old one whole.
- One process writes an output at a time: an exclusive lock (`.NAME.lock` beside it,
  released by the kernel if the process dies) makes a second one stop in one line.
- Files are written to a temp name, fsynced, renamed, and their folder fsynced: whole or absent
  after a power cut.

Names beside an output `NAME`: `.NAME.lock`, `.NAME.partial` (being written),
`.NAME.replaced` (the old output during the swap; restored if a crash fell between the two
renames).
"""
import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import LadError

if os.name != "nt":
    import fcntl


@dataclass(frozen=True)
class Kind:
    """A kind of output: what it is called in messages, whether it is a folder, and how to
    recognise one that lad wrote (`is_own(path)`, path existing)."""

    noun: str
    folder: bool
    is_own: Callable[[Path], bool]

    @property
    def a(self) -> str:
        return f"{'an' if self.noun[0] in 'aeiou' else 'a'} {self.noun}"


def _json_dict(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def is_run_folder(folder: Path) -> bool:
    """A folder lad's training wrote: its config.json is a run configuration."""
    return {"out", "arch", "epochs", "views"} <= _json_dict(Path(folder) / "config.json").keys()


CACHE_FORMAT = "lad-cache"  # the store's `format` attribute
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location) -> bool:
    """An object-store URL (s3://bucket/c.zarr): never a local path (`distill.cache.remote` writes it)."""
    return isinstance(location, str) and bool(_URL.match(location))


def is_cache(folder: Path) -> bool:
    """A store `lad assign --cache` wrote: the zarr group's `format` attribute."""
    attributes = _json_dict(Path(folder) / "zarr.json").get("attributes")
    return isinstance(attributes, dict) and attributes.get("format") == CACHE_FORMAT


def is_predict_folder(folder: Path) -> bool:
    return {"checkpoint", "detections"} <= _json_dict(Path(folder) / "predictions.json").keys()


DATASET_MARK = "lad data synth"  # the `info.description` of the annotation files it writes
CONVERT_MARK = "lad data convert"  # the same, of a dataset converted from VOC or YOLO


def is_dataset(folder: Path) -> bool:
    """A dataset `lad data synth` or `lad data convert` wrote: every annotation file carries its mark."""
    files = list((Path(folder) / "annotations").glob("*.json"))
    infos = [_json_dict(f).get("info") for f in files]
    return bool(files) and all(isinstance(i, dict) and i.get("description") in (DATASET_MARK, CONVERT_MARK)
                               for i in infos)


RUN_FOLDER = Kind("run folder", folder=True, is_own=is_run_folder)
CACHE = Kind("cache", folder=True, is_own=is_cache)
PREDICTIONS = Kind("predict folder", folder=True, is_own=is_predict_folder)
DATASET = Kind("dataset", folder=True, is_own=is_dataset)


def checkpoint_inputs(path: Path | str | None) -> list:
    """A checkpoint given as an input, and its run folder when it is in one (the teacher's run)."""
    if path is None:
        return []
    folder = Path(path).parent
    return [path, folder] if is_run_folder(folder) else [path]


def beside(target: Path, role: str) -> Path:
    return target.with_name(f".{target.name}.{role}")


def fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync there; NTFS journals renames
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: Path, dst: Path) -> None:
    """os.replace(src, dst), then fsync of dst's folder: the rename is atomic, and only the
    folder's fsync makes it survive a power cut (else the old name may come back)."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def write_file(target: Path, write: Callable[[Path], None], noun: str = "") -> None:
    """`write(temp path)` beside `target`, fsync, rename over it, fsync the folder: a kill, a
    power cut or a full disk leaves the old file (or none). The file gets the usual mode
    (0666 less the umask). Callers hold the output's claim (or its run's): the temp name is
    fixed. noun: what errors call the file ("the checkpoint")."""
    target = Path(target)
    partial = beside(target, "partial")
    try:
        partial.unlink(missing_ok=True)
        write(partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        replace_durably(partial, target)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        # torch.save reports its writer's OSError as a RuntimeError whose context is the OSError
        cause = next((e for e in (exc, exc.__context__) if isinstance(e, OSError)), None)
        if cause is None:
            raise
        kept = f"the previous {target.name} is kept" if target.exists() else "nothing was written"
        raise LadError(f"{target}: cannot write{' ' + noun if noun else ''} ({cause.strerror or cause}); {kept}") from None


def write_text(target: Path, text: str, noun: str = "") -> None:
    write_file(target, lambda path: path.write_text(text), noun)


def check_not_an_input(target: Path, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an output that is one of the inputs, lies inside an input folder, or would hold
    an input (replacing it would delete the input)."""
    out = Path(os.path.realpath(target))
    given = [(str(i), Path(os.path.realpath(i))) for i in inputs if i is not None and str(i) != "" and not is_url(i)]
    for name, source in given:
        if out == source or source in out.parents:
            raise LadError(f"{target}: is {'' if out == source else 'inside '}the input {name}; "
                           "write the output somewhere else")
    for name, source in given:
        if out in source.parents:
            raise LadError(f"{target}: holds the input {name}; write the output somewhere else")


class Claim:
    """One output being written by this process. `where` is the path to write to: the
    output itself when nothing was there, else `.NAME.partial` beside it until `commit()`.
    Use as a context manager: leaving without `commit()` removes what was staged. A file
    output is never staged here: `write_file` writes it beside and renames it."""

    def __init__(self, target: Path, kind: Kind, where: Path, replaces: bool, lock_fd: int | None):
        self.target, self.kind, self.where, self.replaces = target, kind, where, replaces
        self._lock_fd = lock_fd
        self.committed = False
        self.made_folder = False  # `where` was made by this claim, in place (a run folder)

    @property
    def staged(self) -> bool:
        return self.where != self.target

    def commit(self) -> None:
        """Put the staged output in place of the old one (two renames, the folder fsynced)."""
        if self.staged:
            old = beside(self.target, "replaced")
            try:
                if self.target.exists() or self.target.is_symlink():
                    os.replace(self.target, old)
                os.replace(self.where, self.target)
                fsync_dir(self.target.parent)
            except OSError as exc:
                raise LadError(f"{self.target}: cannot put the new {self.kind.noun} in place ({exc.strerror}); "
                               f"it is in {self.where}") from None
            _remove(old)
        self.committed = True

    def release(self, discard: bool = True) -> None:
        """Drop the lock, and what was staged unless committed or `discard` is False (a run
        that a later `--resume` continues)."""
        if self.staged and not self.committed and discard:
            _remove(self.where)
        elif self.made_folder and not self.committed and self.where.is_dir() and not any(self.where.iterdir()):
            self.where.rmdir()  # a start refused before writing anything leaves no empty folder behind
        if self._lock_fd is not None:
            lock = beside(self.target, "lock")
            lock.unlink(missing_ok=True)  # before closing: a waiter then sees another file and retries
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(target: Path, kind: Kind, overwrite: bool, inputs: Iterable = (), resume: bool = False,
          stage_new: bool = True, hint: str = "") -> Claim:
    """Take `target` for writing an output of `kind`, or refuse in one line.

    overwrite: replace an existing output lad recognises as its own (staged, swapped in at
    commit). resume: continue an existing one in place (or the replacement a kill interrupted,
    in `.NAME.partial`; with nothing there, start a new one); the caller checks it is
    resumable. stage_new: write a new output beside too (False: directly at `target`, as a
    run folder that `--resume` must find).
    hint: what else the user may pass for an existing output ("--resume to continue it or ")."""
    target = Path(target)
    check_not_an_input(target, inputs)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LadError(f"{target}: cannot write the {kind.noun} ({exc.strerror})") from None
    lock_fd = _lock(target, kind)
    try:
        _restore_interrupted_swap(target)
        partial = beside(target, "partial")
        if resume and partial.exists():
            return Claim(target, kind, partial, True, lock_fd)
        _remove(partial)  # left by a killed run of this output
        there = _exists(target, kind)
        if resume and there:  # continued in place, nothing replaced: the caller checks it can be resumed
            return Claim(target, kind, target, False, lock_fd)
        if there and not kind.is_own(target):
            raise LadError(f"{target}: exists and is not {kind.a} lad wrote; lad replaces only its own "
                           "outputs, so choose another path (nothing was changed)")
        if there and not overwrite:
            raise LadError(f"{target}: {kind.a} is already there; pass {hint}--overwrite to replace it")
        if not kind.folder:  # a file is replaced by one rename: `write_file` stages it
            return Claim(target, kind, target, there, lock_fd)
        where = partial if there or stage_new else target
        made = not where.exists()
        _make_writable_folder(where, target, kind)
        claimed = Claim(target, kind, where, there, lock_fd)
        claimed.made_folder = made and where == target
        return claimed
    except BaseException:
        Claim(target, kind, target, False, lock_fd).release()
        raise


def _exists(target: Path, kind: Kind) -> bool:
    """Something is there: a file, a link, or a folder with anything in it (an empty folder,
    made by the user for the output, is taken as it is)."""
    if target.is_symlink() or target.is_file():
        return True
    if target.is_dir():
        return any(target.iterdir())
    return target.exists()


def _lock(target: Path, kind: Kind) -> int | None:
    """An exclusive lock on `.NAME.lock`, or a LadError when another process holds it. The
    lock file is checked to still be the one at that name after locking (a holder that just
    finished unlinks it), else taken again."""
    if os.name == "nt":
        return None
    path = beside(target, "lock")
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise LadError(f"{target}: cannot write the {kind.noun} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise LadError(f"{target}: another lad process is writing this {kind.noun} now "
                               f"(it holds {path.name}); wait for it, or write elsewhere") from None
            raise LadError(f"{target}: cannot lock it ({exc.strerror})") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise LadError(f"{target}: cannot lock it (its lock file keeps changing)")


def _restore_interrupted_swap(target: Path) -> None:
    """A crash between commit's two renames leaves the old output as `.NAME.replaced` and no
    output: put the old one back (the new one is still in `.NAME.partial`)."""
    old = beside(target, "replaced")
    if old.exists() and not (target.exists() or target.is_symlink()):
        os.replace(old, target)
    elif old.exists():
        _remove(old)


def _make_writable_folder(folder: Path, target: Path, kind: Kind) -> None:
    probe = folder / ".write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LadError(f"{target}: cannot write the {kind.noun} ({exc.strerror})") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
