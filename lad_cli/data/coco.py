"""COCO-format annotations: locate, read, validate, map categories to contiguous labels.

Every problem with the user's files is a LadError naming the file and the image or
annotation id. Values are typed strictly: a bbox is four finite JSON numbers (not strings,
booleans or null), ids are integers that fit int64 (what caches, tensors and the scorer
store; image ids from 0), width and height positive integers, a file_name a relative path
inside the image folder, iscrowd 0 or 1.

Boxes are read as torchvision's detection references, mmdetection and detectron2 read
them (COCO's own train2017 holds boxes of zero width): a box (crowd regions too) of zero or
negative width or height, or with no area inside its image, is dropped; a box overrunning
its image is clipped to it. One warning line per annotation file gives the counts and the
first annotation ids; the split records them (`dropped`, `clipped`). An overrun of at most
1 px is rounding in exported annotations: clipped without being counted. `strict_boxes`
(`--strict-boxes`) refuses the first such box instead. What is scored (`lad eval`) is the
annotation file itself, as COCOeval reads it, not this filtered GT.
"""
import hashlib
import json
import math
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..errors import LadError
from ..runtime import console

OVERRUN_TOLERANCE = 1.0  # px of overrun clipped as rounding, not counted as a clipped box
ID_LIMIT = 1 << 63  # ids are int64 in caches, tensors and the scorer
SHOWN_IDS = 5  # annotation ids named in the dropped/clipped warning
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_SIDE = 1 << 24  # float32 pixel coordinates are exact up to here


@dataclass
class ImageRecord:
    """One image and its GT: boxes (M, 4) float32 xyxy pixels, labels (M,) int64,
    crowd (K, 4) float32 iscrowd regions. GT order = annotation order in the file."""

    id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray


@dataclass
class CocoSplit:
    ann_file: Path
    image_dir: Path
    images: list[ImageRecord]
    categories: list[dict]  # label -> {"id", "name"}, sorted by category id
    sha256: str = field(default="")
    dropped: list[int] = field(default_factory=list)  # annotation ids of boxes without area in their image
    clipped: list[int] = field(default_factory=list)  # annotation ids of boxes clipped to their image

    def category_id(self, label: int) -> int:
        return self.categories[label]["id"]

    def check_categories(self, categories: list[dict], who: str) -> None:
        """Refuse a network (or a cache) made for other classes; `who` names it ("FILE: teacher")."""
        theirs, ours = [c["id"] for c in categories], [c["id"] for c in self.categories]
        if theirs != ours:
            raise LadError(f"{who} was trained on other categories than {self.ann_file} "
                           f"(category ids {theirs}, the file has {ours})")


def category_keys(categories: list[dict]) -> dict[int, str]:
    """How outputs (per-class AP, predict's counts) name each category id: by its name, or
    "name (id N)" where categories share a name, so that two are never merged."""
    uses = Counter(c["name"] for c in categories)
    return {c["id"]: c["name"] if uses[c["name"]] == 1 else f"{c['name']} (id {c['id']})" for c in categories}


def locate_split(data: Path | None, split: str, ann: Path | None = None, images: Path | None = None) -> tuple[Path, Path]:
    """(annotation file, image folder) for `--data DIR [--split]` or `--ann FILE --images DIR`."""
    if ann is not None or images is not None:
        if ann is None or images is None:
            raise LadError("--ann and --images go together")
        return Path(ann), Path(images)
    if data is None:
        raise LadError("give --data DIR, or --ann FILE with --images DIR")
    data = Path(data)
    if not data.is_dir():
        raise LadError(f"{data}: data directory not found")
    layouts = [(data / "annotations" / f"{split}.json", data / "images" / split),
               (data / "annotations" / f"instances_{split}2017.json", data / f"{split}2017")]
    for ann_file, image_dir in layouts:
        if ann_file.is_file():
            return ann_file, image_dir
    raise LadError(f"{data}: no split {split!r} (looked for annotations/{split}.json and annotations/instances_{split}2017.json)")


def load_split(ann_file: Path, image_dir: Path, strict_boxes: bool = False) -> CocoSplit:
    """The split of an annotation file; boxes without area in their image dropped and
    overruns clipped (one warning line), or, `strict_boxes`, refused."""
    if not ann_file.is_file():
        raise LadError(f"{ann_file}: annotation file not found")
    try:
        raw = ann_file.read_bytes()
    except OSError as exc:
        raise LadError(f"{ann_file}: cannot read ({exc.strerror})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; absurdly deep nesting
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise LadError(f"{ann_file}: malformed json{where}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("categories"), list):
        raise LadError(f"{ann_file}: not a COCO annotation file (needs 'images' and 'categories' lists)")
    if not isinstance(doc.get("annotations", []), list):
        raise LadError(f"{ann_file}: 'annotations' is not a list")
    if not image_dir.is_dir():
        raise LadError(f"{image_dir}: image folder not found (for {ann_file})")

    categories = _read_categories(ann_file, doc["categories"])
    label_of = {c["id"]: label for label, c in enumerate(categories)}
    images = _read_images(ann_file, image_dir, doc["images"])
    gts: dict[int, tuple[list, list, list]] = {i.id: ([], [], []) for i in images}
    by_id = {i.id: i for i in images}
    split = CocoSplit(ann_file, image_dir, images, categories, hashlib.sha256(raw).hexdigest())
    seen: set = set()
    for ann in doc.get("annotations", []):
        _add_annotation(ann_file, ann, by_id, label_of, gts, seen, split, strict_boxes)
    for image in images:
        boxes, labels, crowd = gts[image.id]
        image.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        image.labels = np.asarray(labels, dtype=np.int64)
        image.crowd = np.asarray(crowd, dtype=np.float32).reshape(-1, 4)
    if split.dropped or split.clipped:
        console.print(f"warning: {box_report(split)}", markup=False, emoji=False, soft_wrap=True)
    return split


def box_report(split: CocoSplit) -> str:
    """One line: how many boxes were dropped and clipped, with their first annotation ids."""
    def some(ids: list[int]) -> str:
        shown = ", ".join(map(str, ids[:SHOWN_IDS]))
        return shown + (", ..." if len(ids) > SHOWN_IDS else "")

    parts = []
    if split.dropped:
        parts.append(f"{len(split.dropped)} box(es) without area inside the image dropped (annotation ids {some(split.dropped)})")
    if split.clipped:
        parts.append(f"{len(split.clipped)} box(es) overrunning the image clipped to it (annotation ids {some(split.clipped)})")
    return f"{split.ann_file}: " + "; ".join(parts) + " (--strict-boxes refuses them)"


def _is_int(value) -> bool:
    """A JSON integer: not a float (1.0), a boolean or a string."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value) -> bool:
    """A JSON integer that fits int64."""
    return _is_int(value) and -ID_LIMIT <= value < ID_LIMIT


def _is_number(value) -> bool:
    """A finite JSON number (not NaN/Infinity, which Python's json reads, nor beyond float32)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and abs(float(value)) <= FLOAT32_MAX
    except OverflowError:  # an integer beyond any float
        return False


def _short(value) -> str:
    return str(value)[:80]


def _read_categories(ann_file: Path, raw: list) -> list[dict]:
    seen = set()
    for c in raw:
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise LadError(f"{ann_file}: category without an integer id: {_short(c)}")
        if not _is_id(c["id"]):
            raise LadError(f"{ann_file}: category id {c['id']} does not fit a 64-bit integer (-2**63 to 2**63 - 1)")
        if c["id"] in seen:
            raise LadError(f"{ann_file}: duplicate category id {c['id']}")
        seen.add(c["id"])
    if not raw:
        raise LadError(f"{ann_file}: no categories")
    return [{"id": c["id"], "name": str(c.get("name", c["id"]))} for c in sorted(raw, key=lambda c: c["id"])]


def _image_problem(im: dict, image_dir: Path) -> str | None:
    """Why an image entry is unusable (None: it is fine): a non-negative integer id (0 is
    common in exports), positive integer width and height, a relative file_name inside the
    image folder."""
    if not _is_int(im.get("id")) or not 0 <= im["id"] < ID_LIMIT:
        return "id must be a non-negative integer below 2**63 (a 64-bit integer)"
    for key in ("width", "height"):
        if not _is_int(im.get(key)) or not 0 < im[key] <= MAX_SIDE:
            return f"{key} must be a positive integer (at most {MAX_SIDE}), not {_short(im.get(key))}"
    name = im.get("file_name")
    if not isinstance(name, str) or not name or "\x00" in name:
        return "file_name must be a non-empty string"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return f"file_name {name!r} is an absolute path; it must be relative to the image folder"
    if posixpath.normpath(name.replace("\\", "/")).split("/")[0] == "..":
        return f"file_name {name!r} leads out of the image folder {image_dir}"
    return None


def _read_images(ann_file: Path, image_dir: Path, raw: list) -> list[ImageRecord]:
    images, seen = [], set()
    for im in raw:
        if not isinstance(im, dict) or any(k not in im for k in ("id", "file_name", "width", "height")):
            raise LadError(f"{ann_file}: image entry needs id, file_name, width, height: {_short(im)}")
        problem = _image_problem(im, image_dir)
        if problem:
            raise LadError(f"{ann_file}: image id {_short(im['id'])}: {problem}")
        image_id, name, width, height = im["id"], im["file_name"], im["width"], im["height"]
        if image_id in seen:
            raise LadError(f"{ann_file}: duplicate image id {image_id}")
        seen.add(image_id)
        path = image_dir / name
        if not path.is_file():
            raise LadError(f"{ann_file}: image id {image_id}: {path} not found")
        empty = np.zeros((0, 4), np.float32)
        images.append(ImageRecord(image_id, path, width, height, empty, np.zeros(0, np.int64), empty))
    return images


def _add_annotation(ann_file: Path, ann: dict, by_id: dict, label_of: dict, gts: dict, seen: set,
                    split: CocoSplit, strict_boxes: bool) -> None:
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    if not _is_int(ann_id):
        raise LadError(f"{ann_file}: annotation without an integer id: {_short(ann)}")
    if not _is_id(ann_id):
        raise LadError(f"{ann_file}: annotation id {ann_id} does not fit a 64-bit integer (-2**63 to 2**63 - 1)")
    if ann_id in seen:
        raise LadError(f"{ann_file}: duplicate annotation id {ann_id}")
    seen.add(ann_id)
    image_id = ann.get("image_id")
    image = by_id.get(image_id) if _is_int(image_id) else None
    if image is None:
        raise LadError(f"{ann_file}: annotation id {ann_id}: unknown image id {_short(image_id)}")
    where = f"{ann_file}: annotation id {ann_id} (image id {image.id})"
    category = ann.get("category_id")
    if not _is_int(category) or category not in label_of:
        raise LadError(f"{where}: unknown category id {_short(category)}")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise LadError(f"{where}: bbox must be [x, y, width, height], four finite numbers, not {_short(bbox)}")
    crowd_flag = ann.get("iscrowd", 0)
    if not _is_int(crowd_flag) or crowd_flag not in (0, 1):
        raise LadError(f"{where}: iscrowd must be 0 or 1, not {_short(crowd_flag)}")
    x, y, w, h = (float(v) for v in bbox)
    fate, why = _box_fate(x, y, w, h, image)
    if fate is not None and strict_boxes:
        raise LadError(f"{where}: {why} (--strict-boxes)")
    if fate == "dropped":
        split.dropped.append(ann_id)
        return
    if fate == "clipped":
        split.clipped.append(ann_id)
    box = [max(x, 0.0), max(y, 0.0), min(x + w, image.width), min(y + h, image.height)]
    boxes, labels, crowd = gts[image.id]
    if crowd_flag:
        crowd.append(box)
    else:
        boxes.append(box)
        labels.append(label_of[category])


def _box_fate(x: float, y: float, w: float, h: float, image: ImageRecord) -> tuple[str | None, str]:
    """("dropped" or "clipped", why) for a box [x, y, w, h] that has no area inside its image
    or overruns it by more than the rounding tolerance; (None, "") for a box kept as is."""
    shown = f"[{x:g}, {y:g}, {w:g}, {h:g}]"
    if not (w > 0 and h > 0):
        return "dropped", f"box with non-positive size {shown}"
    outside = f"box {shown} lies outside the {image.width}x{image.height} image"
    x1, y1, x2, y2 = np.float32([max(x, 0.0), max(y, 0.0), min(x + w, image.width), min(y + h, image.height)])
    if x2 <= x1 or y2 <= y1:  # in float32, as the boxes are kept: no area there is none at all
        return "dropped", outside
    t = OVERRUN_TOLERANCE
    if x < -t or y < -t or x + w > image.width + t or y + h > image.height + t:
        return "clipped", outside
    return None, ""
