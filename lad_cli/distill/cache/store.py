"""The assignment cache: a zarr v3 store of teacher assignments per (image, view).

Layout (E = images x views entries, entry e = image_index * V + view_id):
  matched    (E, A_max) int16   the Assignment (GT index, -1 background, -2 ignore), padded
                                with -32768 past the entry's own anchor count; one chunk per
                                entry, `shard_entries` entries per shard file, zstd+bitshuffle
                                (a few hundred positives among ~20k anchors compress to ~1 KiB)
             (E, 2 A_max)       format 2, a TAL teacher (attribute class_target): each row is
                                followed by the teacher's normalised alignment of each anchor,
                                round(255 x value), 0 off the positives: the class target of a
                                cached TAL student (same padding; one array, so a shard is still
                                one file and one write)
  entries    (E, 4) int64       per entry: crc32 of its int16 values (both halves), done flag (1
                                once data and checksum are on disk), padded height, padded
                                width; one chunk per shard
Attributes hold the provenance and the COCO image ids (annotation-file order). A shard is
written whole, by one process, `matched` first and its `entries` rows (checksum and done
flag together) last, so a kill leaves the shard's entries not done, never half-labelled.
Per shard two files, plus three metadata files in all. zarr writes each file to a temp
file and renames it; a new store is built in a sibling folder and renamed into place.
A shard counts as done only when its rows say so and its `matched` file is there and
readable (one byte read through zarr's store API per shard): `cache info`, `verify`, a
student and `lad assign --resume` all see a deleted shard file as a shard not done.

Faults: an entry whose chunk does not decode or whose values do not match its checksum is
a LadError naming it (image id and view), never a label. A reader treats an unreadable
`entries` row as an error; a writer (`lad assign --resume`) recomputes that shard.
"""
import asyncio
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from obstore.exceptions import BaseError as StoreRequestError
from zarr.abc.store import SuffixByteRequest
from zarr.codecs import BloscCodec
from zarr.storage import StorePath

from ...errors import LadError
from ...outputs import CACHE_FORMAT, is_url
from .remote import (ShardObjects, check_reachable, location, reading_location, request_failure, store_error,
                     stored_bytes, zarr_store)

FORMAT = CACHE_FORMAT
FORMAT_VERSION = 2  # 2: TAL stores may carry the teacher's alignment (format 1 stores read as before)
READABLE_VERSIONS = (1, 2)
TEACHER_ALIGNMENT = "teacher_alignment"  # the class_target attribute of a store that carries it
ALIGNMENT_SCALE = 255
PAD = -32768
CRC, DONE, HEIGHT, WIDTH = range(4)  # columns of `entries`
# A reader keeps one decoded shard in memory when it is at most this big: decoding a shard
# at once costs a fifth of decoding its chunks one by one, and small stores then read free.
SLAB_BYTES = 64 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entries_per_shard(requested: int, entries: int) -> int:
    """The shard size of a store of `entries` entries made with --shard-entries `requested`."""
    return max(1, min(requested, entries))


def entry_crc(matched: np.ndarray, alignment: np.ndarray | None = None) -> int:
    """crc32 of an entry's int16 values: its assignment, then its stored alignment if any."""
    crc = zlib.crc32(np.ascontiguousarray(matched, dtype="<i2").tobytes())
    return crc if alignment is None else zlib.crc32(np.ascontiguousarray(alignment, dtype="<i2").tobytes(), crc)


def quantise_alignment(target: np.ndarray) -> np.ndarray:
    """(..., A) float alignment in [0, 1] -> the stored int16 values 0..255."""
    return np.rint(np.clip(target, 0.0, 1.0) * ALIGNMENT_SCALE).astype(np.int16)


# What a student on a cache can check against values it knows itself, the most specific
# first (renamed categories also change the annotation file's hash; the error names the
# categories). teacher_sha256 and the assigner's teacher_precision are recorded but cannot
# be checked there: a cached student loads no teacher.
STUDENT_CHECKED = ("categories", "views", "anchor_layout", "assigner", "annotations_sha256")
TEACHER_RUN_ONLY = ("teacher_precision",)


@dataclass
class Provenance:
    """What produced a cache; compared field by field against what a reader expects."""

    teacher_sha256: str
    annotations_sha256: str
    views: list[dict]
    anchor_layout: dict
    assigner: dict
    categories: list[dict]

    def mismatch(self, other: "Provenance") -> str | None:
        """Name of the first field that differs, or None."""
        for name in ("annotations_sha256", "views", "anchor_layout", "categories", "assigner", "teacher_sha256"):
            if _plain(getattr(self, name)) != _plain(getattr(other, name)):
                return name
        return None

    def differs_from(self, known: dict) -> str | None:
        """The first of STUDENT_CHECKED whose recorded value differs from `known[name]` (what a
        cached student knows itself); `assigner` without the keys only the teacher's run knew."""
        for name in STUDENT_CHECKED:
            recorded = getattr(self, name)
            if name == "assigner":
                recorded = {k: v for k, v in recorded.items() if k not in TEACHER_RUN_ONLY}
            if _plain(recorded) != _plain(known[name]):
                return name
        return None


def _plain(value):
    """JSON-shaped value (tuples as lists) for comparisons with what zarr attributes hold."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


async def _keys_under(folder: StorePath) -> list[str]:
    """The stored keys under `folder`, relative to it (zarr lists a store asynchronously only)."""
    prefix = f"{folder.path}/"
    return [key[len(prefix):] async for key in folder.store.list_prefix(prefix)]


class AssignmentCache:
    """A store at a local path or a URL (`remote`). `path` names it in messages (a Path, or the
    URL as a string); `stored_at` is where it is read (a URL store's replacement while it is
    being copied in place); `reads`: the `matched` array the entries are read through."""

    def __init__(self, path: Path | str, group: zarr.Group, writable: bool = False,
                 stored_at: Path | str | None = None, reads: zarr.Array | None = None):
        self.path = location(path)
        self.stored_at = self.path if stored_at is None else stored_at
        self.group = group
        self.writable = writable
        attrs = dict(group.attrs)
        self.attrs = attrs
        self.num_images = attrs["num_images"]
        self.num_views = len(attrs["views"])
        self.shard_entries = attrs["shard_entries"]
        self.max_anchors = attrs["max_anchors"]
        # Whether each row carries the teacher's alignment after its assignment (format 2, TAL).
        self.has_alignment = attrs.get("class_target") == TEACHER_ALIGNMENT
        self.provenance = Provenance(**{k: attrs[k] for k in Provenance.__dataclass_fields__})
        self._matched = group["matched"]
        self._reads = self._matched if reads is None else reads
        self._crc = None
        self._slab: tuple[int, np.ndarray] | None = None

    @property
    def num_entries(self) -> int:
        return self.num_images * self.num_views

    @property
    def num_shards(self) -> int:
        return -(-self.num_entries // self.shard_entries)

    @staticmethod
    def create(path: Path | str, provenance: Provenance, image_ids: list[int], padded_hw: np.ndarray,
               max_anchors: int, shard_entries: int, alignment: bool = False) -> None:
        """A new, empty store (every entry not done) in the empty folder `path`, which the
        caller claimed (`outputs.claim`: it is staged beside the output and renamed into
        place, so a kill or a full disk during creation leaves no half-made store).
        padded_hw: (E, 2); alignment: whether rows carry the teacher's alignment. Raises OSError
        (the caller names the output)."""
        entries = len(padded_hw)
        shard = entries_per_shard(shard_entries, entries)
        group = zarr.open_group(zarr_store(location(path)), mode="w", zarr_format=3)
        target = {"class_target": TEACHER_ALIGNMENT, "alignment_scale": ALIGNMENT_SCALE} if alignment else {}
        group.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "num_images": len(image_ids),
                            "image_ids": [int(i) for i in image_ids], "shard_entries": shard,
                            "max_anchors": max_anchors, **target, **_plain(provenance.__dict__)})
        width = max_anchors * (2 if alignment else 1)
        group.create_array("matched", shape=(entries, width), dtype="int16", chunks=(1, width),
                           shards=(shard, width), fill_value=PAD,
                           compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")])
        table = np.zeros((entries, 4), np.int64)
        table[:, [HEIGHT, WIDTH]] = padded_hw
        group.create_array("entries", shape=(entries, 4), dtype="int64", chunks=(shard, 4), fill_value=0)[:] = table

    @staticmethod
    def open(path: Path | str, mode: str = "r") -> "AssignmentCache":
        path = location(path)
        if is_url(path):
            check_reachable(path)
            stored_at = reading_location(path) if mode == "r" else path
        else:
            stored_at = path
            if not (path / "zarr.json").is_file():
                raise LadError(f"{path}: not an assignment cache (no zarr.json)")
        try:
            group = zarr.open_group(zarr_store(stored_at, read_only=mode == "r"), mode=mode, zarr_format=3)
            attrs = dict(group.attrs)
        except StoreRequestError as exc:
            raise store_error(str(path), exc) from None
        except Exception as exc:
            if is_url(path) and isinstance(exc, FileNotFoundError):  # zarr's GroupNotFoundError: no zarr.json there
                raise LadError(f"{path}: not an assignment cache (no zarr.json)") from None
            raise LadError(f"{path}: unreadable cache ({type(exc).__name__})") from None
        if attrs.get("format") != FORMAT:
            raise LadError(f"{path}: not an assignment cache")
        if attrs.get("format_version") not in READABLE_VERSIONS:
            raise LadError(f"{path}: cache format version {attrs.get('format_version')}, this lad reads "
                           f"{', '.join(map(str, READABLE_VERSIONS))}")
        # A reader of a URL store reads each shard object once (`remote.ShardObjects`).
        reads = zarr.open_array(ShardObjects(group.store), path="matched", mode="r") \
            if is_url(stored_at) and mode == "r" and "matched" in group else None
        try:
            return AssignmentCache(path, group, writable=mode != "r", stored_at=stored_at, reads=reads)
        except KeyError as exc:
            raise LadError(f"{path}: unreadable cache ({exc} missing)") from None

    def remove_partial_writes(self) -> None:
        """Delete what writes a kill interrupted left in the arrays: every stored key under
        `matched` or `entries` that is neither their metadata nor one of their shard keys
        (zarr writes a file under a temp name beside its key and renames it; whatever zarr
        names it, it is none of those keys). Only the one process that resumes the store may
        call this, before any shard is written."""
        for array in (self._matched, self.group["entries"]):
            keep = {"zarr.json", *(array.metadata.encode_chunk_key((s, 0)) for s in range(self.num_shards))}
            for key in asyncio.run(_keys_under(array.store_path)):
                if key not in keep:
                    self._delete(array.store_path / key)

    def _delete(self, stored: StorePath) -> None:
        if is_url(self.stored_at):  # zarr's ObjectStore answers asynchronously only
            asyncio.run(stored.delete())
        else:
            stored.delete_sync()

    def _shard_file(self, shard: int) -> StorePath:
        """Where `matched`'s shard is stored (sharded: one stored object per shard, keyed by its
        coordinates in the array's shard grid)."""
        return self._matched.store_path / self._matched.metadata.encode_chunk_key((shard, 0))

    def shard_stored(self, shard: int) -> bool:
        """Whether `matched`'s shard file is there and readable: its last byte is read, no
        chunk is decoded (`verify` reads them all)."""
        try:
            request = self._shard_file(shard)
            if is_url(self.stored_at):  # zarr's ObjectStore answers asynchronously only
                tail = asyncio.run(request.get(byte_range=SuffixByteRequest(1)))
            else:
                tail = request.get_sync(byte_range=SuffixByteRequest(1))
        except OSError:
            return False
        except StoreRequestError as exc:
            raise store_error(str(self.path), exc) from None
        return tail is not None and len(tail) > 0

    def label(self, e: int) -> str:
        """How errors name entry e: its index, COCO image id and view."""
        image, view = divmod(e, self.num_views)
        return f"entry {e} (image id {self.attrs['image_ids'][image]}, view {self.attrs['views'][view]['name']})"

    def entry(self, index: int, view_id: int) -> int:
        return index * self.num_views + view_id

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_entries, min((shard + 1) * self.shard_entries, self.num_entries))

    def done(self) -> np.ndarray:
        """(E,) bool: the entry's row says done and its shard's `matched` file is stored."""
        done = self.table()[:, DONE] == 1
        for shard in self.missing_shards(done):
            r = self.shard_range(shard)
            done[r.start:r.stop] = False
        return done

    def missing_shards(self, rows_done: np.ndarray | None = None) -> list[int]:
        """Shards whose rows say done but whose `matched` file is missing or unreadable: not
        done for `lad assign --resume` (it recomputes them), incomplete for every reader."""
        if rows_done is None:
            rows_done = self.table()[:, DONE] == 1
        return [s for s in range(self.num_shards)
                if rows_done[self.shard_range(s).start:self.shard_range(s).stop].any() and not self.shard_stored(s)]

    def table(self) -> np.ndarray:
        """(E, 4) int64 `entries`. A shard whose rows cannot be read is a LadError for a
        reader; a writer counts it as not done, so that `lad assign --resume` recomputes it."""
        rows = np.zeros((self.num_entries, 4), np.int64)
        for shard in range(self.num_shards):
            r = self.shard_range(shard)
            try:
                rows[r.start:r.stop] = self.group["entries"][r.start:r.stop]
            except StoreRequestError as exc:
                raise store_error(str(self.path), exc) from None
            except Exception as exc:
                if not self.writable:
                    raise LadError(f"{self.path}: the entry table of shard {shard} (entries {r.start}-{r.stop - 1}) is "
                                   f"unreadable ({type(exc).__name__}); lad assign --resume recomputes it") from None
        return rows

    def padded_hw(self) -> np.ndarray:
        """(E, 2) padded input shape of each entry, as written at creation."""
        return self.table()[:, [HEIGHT, WIDTH]]

    def image_ids(self) -> np.ndarray:
        return np.asarray(self.attrs["image_ids"], dtype=np.int64)

    def numerics(self) -> list[dict] | str:
        """What decided the teacher's numerics, one dict per setting that wrote shards
        (`distill.teacher.Teacher.numerics`); "unknown" for a store written before they were recorded."""
        return self.attrs.get("numerics", "unknown")

    def add_numerics(self, settings: list[dict]) -> None:
        """Record the settings of the processes about to write shards, beside those already
        recorded (a store resumed elsewhere, or by other processes, lists each). Not provenance:
        a student checks nothing of it."""
        recorded = self.attrs.get("numerics", [])
        new = recorded + [s for i, s in enumerate(settings) if s not in recorded and s not in settings[:i]]
        if new == recorded:
            return
        try:
            self.group.attrs["numerics"] = new
        except OSError as exc:
            raise LadError(f"{self.path}: cannot write the cache's attributes ({exc.strerror})") from None
        self.attrs["numerics"] = new

    def write_shard(self, shard: int, matched: np.ndarray, counts: np.ndarray, padded: np.ndarray,
                    alignment: np.ndarray | None = None) -> None:
        """matched: (entries of the shard, A_max) int16, PAD past each entry's `counts`;
        padded: (entries of the shard, 2) their padded shapes; alignment: like `matched`, the
        quantised alignment (`quantise_alignment`), for a store that carries it."""
        if self.has_alignment != (alignment is not None):
            raise ValueError("the alignment is given exactly when the store carries it")
        r = self.shard_range(shard)
        rows = np.zeros((len(r), 4), np.int64)
        halves = [None] * len(r) if alignment is None else alignment
        rows[:, CRC] = [entry_crc(m[:c], None if a is None else a[:c]) for m, a, c in zip(matched, halves, counts)]
        rows[:, DONE] = 1
        rows[:, [HEIGHT, WIDTH]] = padded
        try:
            # zarr reads a shard file before rewriting it, and a corrupt one (the reason this shard
            # may be recomputed) would block the write; the shard is written whole, so drop it first.
            self._delete(self._shard_file(shard))
            self._matched[r.start:r.stop] = matched if alignment is None else np.concatenate([matched, alignment], 1)
            self.group["entries"][r.start:r.stop] = rows
        except (OSError, StoreRequestError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else request_failure(exc)
            raise LadError(f"{self.path}: cannot write shard {shard} ({why}); the finished shards are kept, "
                           "lad assign --resume continues") from None

    def read(self, e: int, num_anchors: int) -> np.ndarray:
        """The assignment of entry e as (num_anchors,) int64, checksum-verified."""
        return self.read_entry(e, num_anchors)[0]

    def read_entry(self, e: int, num_anchors: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Entry e's assignment, (num_anchors,) int64, and the teacher's alignment where the store
        carries it, (num_anchors,) float32 in [0, 1] (else None); checksum-verified."""
        if self._crc is None:
            self._crc = self.table()[:, CRC]
        shard = e // self.shard_entries
        row_bytes = self.max_anchors * (2 if self.has_alignment else 1) * 2
        if self.shard_entries * row_bytes <= SLAB_BYTES and (self._slab is None or self._slab[0] != shard):
            r = self.shard_range(shard)
            try:
                self._slab = (shard, self._reads[r.start:r.stop])
            except StoreRequestError as exc:
                raise store_error(str(self.path), exc) from None
            except Exception:  # a chunk that does not decode: read entry by entry, so the error names it
                self._slab = None
        if self._slab is not None and self._slab[0] == shard:
            row = self._slab[1][e - shard * self.shard_entries]
        else:
            row = self._row(e)
        matched, alignment = self.split_row(row, num_anchors)
        if entry_crc(matched, alignment) != int(self._crc[e]):
            raise LadError(f"{self.path}: {self.label(e)} is corrupt (checksum mismatch)")
        return matched.astype(np.int64), None if alignment is None else alignment.astype(np.float32) / ALIGNMENT_SCALE

    def split_row(self, row: np.ndarray, num_anchors: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A stored row's assignment and stored alignment (None: the store carries none), each
        (num_anchors,) int16 as stored."""
        alignment = row[self.max_anchors:self.max_anchors + num_anchors] if self.has_alignment else None
        return row[:num_anchors], alignment

    def _row(self, e: int) -> np.ndarray:
        try:
            return self._reads[e]
        except StoreRequestError as exc:
            raise store_error(str(self.path), exc) from None
        except Exception as exc:
            raise LadError(f"{self.path}: {self.label(e)} is corrupt (its chunk does not decode: {type(exc).__name__})") from None

    def slabs(self):
        """(entry range, stored rows) shard by shard: the fast way to scan the whole store
        (`split_row` parts a row).
        A shard that does not decode is read entry by entry, so that the error names the entry."""
        for shard in range(self.num_shards):
            r = self.shard_range(shard)
            try:
                slab = self._reads[r.start:r.stop]
            except StoreRequestError as exc:
                raise store_error(str(self.path), exc) from None
            except Exception:
                slab = np.stack([self._row(e) for e in r])
            yield r, slab

    def digest(self, anchor_counts: np.ndarray) -> str:
        """sha256 over every entry's sha256, in canonical (image id, view) order."""
        per_entry = [b""] * self.num_entries
        for r, slab in self.slabs():
            for e, row in zip(r, slab):
                parts = [p for p in self.split_row(row, anchor_counts[e]) if p is not None]
                per_entry[e] = hashlib.sha256(b"".join(np.ascontiguousarray(p, dtype="<i2").tobytes() for p in parts)).digest()
        h = hashlib.sha256()
        for image in np.argsort(self.image_ids(), kind="stable"):
            for view in range(self.num_views):
                h.update(per_entry[self.entry(int(image), view)])
        return h.hexdigest()

    def fetched_bytes(self) -> int | None:
        """Bytes of shard objects this reader fetched from a URL store (None: a local store)."""
        store = self._reads.store_path.store
        return store.fetched_bytes if isinstance(store, ShardObjects) else None

    def bytes_on_disk(self) -> tuple[int, int]:
        """(total bytes, number of files or objects) of the store."""
        return stored_bytes(self.stored_at)


def anchor_counts(padded_hw: np.ndarray, layout) -> np.ndarray:
    """(E,) anchors per entry from its padded shape."""
    return np.array([sum(layout.num_per_level((int(h), int(w)))) for h, w in padded_hw], dtype=np.int64)
