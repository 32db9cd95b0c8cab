"""COCO-format annotations: locate, read, validate, map categories to contiguous labels.

Every problem with the user's files is a LadError naming the file and the image or
annotation id. Values are typed strictly: a bbox is four finite JSON numbers (not strings,
booleans or null), ids are integers, width and height positive integers, a file_name a
relative path inside the image folder, iscrowd 0 or 1. Boxes that overrun their image by
at most 1 px (rounding in exported annotations) are clipped; boxes further outside are
rejected.
"""
import hashlib
import json
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..errors import LadError

OVERRUN_TOLERANCE = 1.0
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

    def category_id(self, label: int) -> int:
        return self.categories[label]["id"]

    def check_categories(self, categories: list[dict], who: str) -> None:
        """Refuse a network (or a cache) made for other classes; `who` names it ("FILE: teacher")."""
        theirs, ours = [c["id"] for c in categories], [c["id"] for c in self.categories]
        if theirs != ours:
            raise LadError(f"{who} was trained on other categories than {self.ann_file} "
                           f"(category ids {theirs}, the file has {ours})")


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


def load_split(ann_file: Path, image_dir: Path) -> CocoSplit:
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
    seen: set = set()
    for ann in doc.get("annotations", []):
        _add_annotation(ann_file, ann, by_id, label_of, gts, seen)
    for image in images:
        boxes, labels, crowd = gts[image.id]
        image.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        image.labels = np.asarray(labels, dtype=np.int64)
        image.crowd = np.asarray(crowd, dtype=np.float32).reshape(-1, 4)
    return CocoSplit(ann_file, image_dir, images, categories, hashlib.sha256(raw).hexdigest())


def _is_int(value) -> bool:
    """A JSON integer: not a float (1.0), a boolean or a string."""
    return isinstance(value, int) and not isinstance(value, bool)


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
    if not _is_int(im.get("id")) or im["id"] < 0:
        return "id must be a non-negative integer"
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


def _add_annotation(ann_file: Path, ann: dict, by_id: dict, label_of: dict, gts: dict, seen: set) -> None:
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    if not _is_int(ann_id):
        raise LadError(f"{ann_file}: annotation without an integer id: {_short(ann)}")
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
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        raise LadError(f"{where}: box with non-positive size [{x:g}, {y:g}, {w:g}, {h:g}]")
    t = OVERRUN_TOLERANCE
    box = [max(x, 0.0), max(y, 0.0), min(x + w, image.width), min(y + h, image.height)]
    if x < -t or y < -t or x + w > image.width + t or y + h > image.height + t or box[2] <= box[0] or box[3] <= box[1]:
        raise LadError(f"{where}: box [{x:g}, {y:g}, {w:g}, {h:g}] lies outside the {image.width}x{image.height} image")
    crowd_flag = ann.get("iscrowd", 0)
    if not _is_int(crowd_flag) or crowd_flag not in (0, 1):
        raise LadError(f"{where}: iscrowd must be 0 or 1, not {_short(crowd_flag)}")
    boxes, labels, crowd = gts[image.id]
    if crowd_flag:
        crowd.append(box)
    else:
        boxes.append(box)
        labels.append(label_of[category])
