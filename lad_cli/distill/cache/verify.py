"""`lad cache info` and `lad cache verify`: a store's size, provenance and digest, and its
check against the dataset it was made for."""
from pathlib import Path

import numpy as np

from ...data.coco import load_split, locate_split
from ...data.dataset import DetectionDataset
from ...data.views import View
from ...errors import LadError
from ...model.anchors import AnchorLayout
from .store import ALIGNMENT_SCALE, CRC, PAD, AssignmentCache, anchor_counts, entry_crc


def cache_info(path: Path) -> dict:
    """What `lad cache info` prints: size, completeness (`missing_shards`: shards whose rows
    say done but whose `matched` file is missing or unreadable, counted not done), provenance,
    the numerics it was computed with and the digest."""
    cache = AssignmentCache.open(path)
    counts = anchor_counts(cache.padded_hw(), AnchorLayout.from_dict(cache.provenance.anchor_layout))
    size, files = cache.bytes_on_disk()
    missing = cache.missing_shards()
    done = int(cache.done().sum())
    return {"path": str(cache.path), "format_version": cache.attrs["format_version"], "images": cache.num_images,
            "views": [v["name"] for v in cache.attrs["views"]], "entries": cache.num_entries, "done": done,
            "complete": done == cache.num_entries, "missing_shards": missing, "bytes_on_disk": size, "files": files,
            "bytes_per_entry": round(size / max(1, cache.num_entries), 1), "shard_entries": cache.shard_entries,
            "teacher_sha256": cache.provenance.teacher_sha256,
            "annotations_sha256": cache.provenance.annotations_sha256,
            "anchor_layout": cache.provenance.anchor_layout, "assigner": cache.provenance.assigner,
            "class_target": class_target(cache),
            "numerics": cache.numerics(), "digest": cache.digest(counts)}


def class_target(cache: AssignmentCache) -> str:
    """What a cached student of this store trains its classification on, by default."""
    if cache.has_alignment:
        return f"the teacher's alignment (stored, 1/{ALIGNMENT_SCALE} steps)"
    if (cache.provenance.assigner or {}).get("name", "paa") != "tal":
        return "one-hot (a PAA student; a TAL student uses its own alignment)"
    return "the student's own alignment (format 1: the store holds no alignment; lad assign --overwrite adds it)"


def verify_cache(cache: AssignmentCache, split, layout, expected_padded: np.ndarray) -> None:
    """Raise LadError with the first problem: provenance, completeness, shapes, GT range, checksums."""
    where = f"{cache.path}"
    if cache.provenance.annotations_sha256 != split.sha256:
        raise LadError(f"{where}: annotations_sha256 differs from {split.ann_file}")
    split.check_categories(cache.provenance.categories, f"{where}: the cache's teacher")
    if not np.array_equal(cache.image_ids(), [r.id for r in split.images]):
        raise LadError(f"{where}: image ids differ from {split.ann_file} ({cache.num_images} vs {len(split.images)} images)")
    done = cache.done()
    if not done.all():
        raise LadError(f"{where}: cache incomplete: {int(done.sum())} of {len(done)} entries (finish it with lad assign --resume)")
    padded = cache.padded_hw()
    bad = np.nonzero((padded != expected_padded).any(1))[0]
    if len(bad):
        raise LadError(f"{where}: entry {bad[0]}: padded shape {tuple(padded[bad[0]])} does not match the view, "
                       f"expected {tuple(expected_padded[bad[0]])}")
    counts = anchor_counts(padded, layout)
    crcs = cache.table()[:, CRC]
    num_gts = [len(r.boxes) for r in split.images]
    for r, slab in cache.slabs():
        for e, row in zip(r, slab):
            label = cache.label(e)
            values, alignment = cache.split_row(row, counts[e])
            if entry_crc(values, alignment) != crcs[e]:
                raise LadError(f"{where}: {label} is corrupt (checksum mismatch)")
            padding = [row[counts[e]:cache.max_anchors]] + ([row[cache.max_anchors + counts[e]:]] if cache.has_alignment else [])
            if any((p != PAD).any() for p in padding):
                raise LadError(f"{where}: {label} has values past its {counts[e]} anchors")
            if values.min(initial=0) < -2 or values.max(initial=-1) >= num_gts[e // cache.num_views]:
                raise LadError(f"{where}: {label} has GT indices outside [-2, {num_gts[e // cache.num_views]})")
            if alignment is not None and ((alignment < 0) | (alignment > ALIGNMENT_SCALE) | ((alignment > 0) & (values < 0))).any():
                raise LadError(f"{where}: {label} has an alignment outside [0, {ALIGNMENT_SCALE}] or off its positives")


def verify_store(path: Path, data, split_name: str, ann, images, strict_boxes: bool = False) -> str:
    """`lad cache verify`: the first problem as a LadError, or a one-line OK."""
    cache = AssignmentCache.open(path)
    split = load_split(*locate_split(data, split_name, ann, images), strict_boxes=strict_boxes)
    layout = AnchorLayout.from_dict(cache.provenance.anchor_layout)
    views = [View(**v) for v in cache.attrs["views"]]
    verify_cache(cache, split, layout, DetectionDataset(split, views, layout.size_divisor).entry_shapes())
    return f"ok: {cache.num_entries} entries ({cache.num_images} images x {len(views)} views) verified"
