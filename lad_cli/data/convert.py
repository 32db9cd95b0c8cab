"""`lad data convert`: a Pascal VOC or ultralytics YOLO dataset in the layout lad reads
(DIR/annotations/{split}.json, DIR/images/{split}/), written through the output policy.

The box parsing is globox's (`BoundingBox.from_xml` for a VOC <object>, `from_yolo_v5` for
a YOLO line: relative centre/size to pixel corners). Chosen over supervision (measured on
400 generated files of each format: both parse them in under 0.1 s): globox is 0.4 MB of
pure Python whose only new dependency is tqdm, keeps coordinates in float64 (exact), and
exposes the per-object / per-line parsers, so we keep VOC's `difficult` flag and can name
the line of a bad YOLO label; supervision 0.31 pulls PyAV, scipy and requests (about 260 MB),
decodes every VOC image (OpenCV, or a slower fallback) for its size, returns float32 boxes
(60 becomes 60.0000038) and drops `difficult`. The layouts (ImageSets lists, data.yaml,
images/ -> labels/) and the rules below are ours:

- VOC <bndbox> holds 1-based inclusive pixel indices (the devkit's; xmin=1 is the first
  pixel, xmax=W the last): COCO box [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1],
  as detectron2 and supervision read them. `difficult` objects become `iscrowd` regions:
  ignored by COCOeval (as VOC's own evaluation and mmdetection's ignore them) and ignore
  regions in training, neither a positive nor a negative.
- YOLO class index i keeps its id i (lad reads category id 0; detections then carry the
  indices the user's other tools know); VOC classes get ids 1..N, sorted by name or in the
  order of a --classes file. Every class is a category, with or without boxes.
- A box overrunning its image is clipped to it and counted; one with no area inside it is
  skipped and counted. An image without boxes (empty label file, no label file, no XML) is
  kept as a negative. Image sizes are read from the image files (the stored pixels, as
  lad reads them), not from the XML.
- Images are hard-linked into DIR/images/{split}/ where the filesystem allows it, else copied.
"""
import json
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import LadError
from ..outputs import CONVERT_MARK, DATASET
from ..outputs import claim as claim_output
from ..progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VOC_LISTS = ("train", "val", "trainval", "test")  # ImageSets/Main/{name}.txt


@dataclass
class SourceImage:
    path: Path
    file_name: str  # relative to DIR/images/{split}/
    width: int
    height: int
    annotations: list = field(default_factory=list)  # (category id, [x, y, w, h], iscrowd)


@dataclass
class Counts:
    images: int = 0
    boxes: int = 0
    negatives: int = 0  # images without a box
    without_labels: int = 0  # of those: no label file / XML at all
    difficult: int = 0  # VOC difficult objects, written as iscrowd
    clipped: int = 0
    skipped: int = 0


def coco_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[list | None, str]:
    """The COCO [x, y, w, h] of pixel corners inside a width x height image and what was done:
    "kept", "clipped" (it overran the image) or "skipped" (no area inside it; box None)."""
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if not (cx2 > cx1 and cy2 > cy1):  # NaN too
        return None, "skipped"
    fate = "kept" if (cx1, cy1, cx2, cy2) == (x1, y1, x2, y2) else "clipped"
    return [cx1, cy1, cx2 - cx1, cy2 - cy1], fate


def add_box(image: SourceImage, counts: Counts, category: int, corners: tuple | None, crowd: bool = False) -> None:
    """Clip (or skip) a box given by pixel corners, None for one the parser refused as reversed."""
    box, fate = (None, "skipped") if corners is None else coco_box(*corners, image.width, image.height)
    counts.clipped += fate == "clipped"
    counts.skipped += fate == "skipped"
    if box is not None:
        image.annotations.append((category, box, int(crowd)))
        counts.boxes += not crowd
        counts.difficult += crowd


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the stored pixels, from the file's header."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise LadError(f"{path}: cannot read the image ({exc})") from None


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _globox():
    import globox  # imported here: only `lad data convert` needs it

    return globox


# ---------------------------------------------------------------- Pascal VOC

def read_voc(src: Path, split: str | None, classes_file: Path | None) -> tuple[list[dict], dict, dict]:
    """(categories, {split: [SourceImage]}, {split: Counts}) of a VOC folder."""
    ann_dir, img_dir = src / "Annotations", src / "JPEGImages"
    if not img_dir.is_dir():
        raise LadError(f"{src}: not a Pascal VOC folder (no JPEGImages/)")
    lists = {name: src / "ImageSets" / "Main" / f"{name}.txt" for name in VOC_LISTS}
    lists = {name: f for name, f in lists.items() if f.is_file()}
    if lists and split is not None:
        raise LadError(f"{src}: --split names the one split of a VOC folder without ImageSets/Main lists; "
                       f"this one has {', '.join(lists)}")
    by_id = {p.stem: p for p in reversed(images_in(img_dir))}  # a.jpg before a.png
    if lists:
        ids = {name: [line.split()[0] for line in f.read_text().splitlines() if line.strip()] for name, f in lists.items()}
    else:
        xml_ids = {p.stem for p in ann_dir.glob("*.xml")} if ann_dir.is_dir() else set()
        ids = {split or "train": sorted(set(by_id) | xml_ids)}
    objects = {i: _voc_objects(ann_dir / f"{i}.xml") for i in sorted({i for v in ids.values() for i in v})}
    categories = _voc_categories(objects, classes_file)
    id_of = {c["name"]: c["id"] for c in categories}
    splits, counts = {}, {}
    for name, split_ids in ids.items():
        splits[name], counts[name] = [], Counts()
        for image_id in split_ids:
            path = by_id.get(image_id)
            if path is None:
                where = f"listed in {lists[name]}" if lists else f"{ann_dir / image_id}.xml"
                raise LadError(f"{img_dir}: no image {image_id}.* ({where})")
            image = SourceImage(path, path.name, *image_size(path))
            found = objects[image_id]
            counts[name].without_labels += found is None
            for label, corners, difficult in found or []:
                if label not in id_of:
                    raise LadError(f"{ann_dir / image_id}.xml: class {label!r} is not in {classes_file}")
                add_box(image, counts[name], id_of[label], corners, difficult)
            splits[name].append(image)
    return categories, splits, counts


def _voc_objects(xml_file: Path) -> list | None:
    """[(name, pixel corners or None, difficult)] of an annotation file (None: no file)."""
    if not xml_file.is_file():
        return None
    try:
        root = ET.parse(xml_file).getroot()
    except (OSError, ET.ParseError) as exc:
        raise LadError(f"{xml_file}: not a Pascal VOC annotation ({exc})") from None
    globox, found = _globox(), []
    for node in root.iter("object"):
        try:
            box = globox.BoundingBox.from_xml(node)
            corners = (box.xmin - 1, box.ymin - 1, box.xmax, box.ymax)  # 1-based inclusive pixels
        except AssertionError:  # globox refuses xmax < xmin: a box without area, skipped
            corners = None
        except (ValueError, globox.ParsingError):
            raise LadError(f"{xml_file}: object {len(found) + 1}: needs a <name> and a <bndbox> of numbers "
                           "xmin, ymin, xmax, ymax") from None
        difficult = (node.findtext("difficult") or "0").strip() not in ("0", "")
        found.append((node.findtext("name").strip(), corners, difficult))
    return found


def _voc_categories(objects: dict, classes_file: Path | None) -> list[dict]:
    if classes_file is None:
        names = sorted({label for found in objects.values() for label, _, _ in found or []})
        if not names:
            raise LadError("no object in the VOC annotations: give the classes with --classes FILE")
    else:
        try:
            names = [line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise LadError(f"{classes_file}: cannot read ({exc.strerror})") from None
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice or not names:
            raise LadError(f"{classes_file}: " + (f"class {twice[0]!r} is listed twice" if twice else "no class names"))
    return [{"id": i, "name": n} for i, n in enumerate(names, start=1)]


# ---------------------------------------------------------------- ultralytics YOLO

def read_yolo(src: Path) -> tuple[list[dict], dict, dict]:
    """(categories, {split: [SourceImage]}, {split: Counts}) of a folder with data.yaml (or
    the yaml file itself): images/{split}/ with labels/{split}/*.txt beside."""
    yaml_file = src if src.is_file() else src / "data.yaml"
    if not yaml_file.is_file():
        raise LadError(f"{src}: not an ultralytics YOLO folder (no data.yaml)")
    doc = _read_yaml(yaml_file)
    categories = _yolo_categories(yaml_file, doc.get("names"))
    root = yaml_file.parent / str(doc.get("path") or "")
    root = root if root.is_dir() else yaml_file.parent  # a `path` of the exporter's machine
    splits, counts = {}, {}
    for name in ("train", "val", "test"):
        folder = doc.get(name)
        if not folder:
            continue
        if not isinstance(folder, str) or folder.endswith(".txt"):
            raise LadError(f"{yaml_file}: {name}: give one image folder (lists of folders or .txt files are not read)")
        image_dir = root / folder
        if not image_dir.is_dir():
            raise LadError(f"{yaml_file}: {name}: image folder {image_dir} not found")
        splits[name], counts[name] = [], Counts()
        for path in images_in(image_dir):
            image = SourceImage(path, path.relative_to(image_dir).as_posix(), *image_size(path))
            _read_yolo_labels(_label_file(path), image, categories, counts[name])
            splits[name].append(image)
    if not splits:
        raise LadError(f"{yaml_file}: no train, val or test image folder")
    return categories, splits, counts


def _read_yaml(yaml_file: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(yaml_file.read_text())
    except OSError as exc:
        raise LadError(f"{yaml_file}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise LadError(f"{yaml_file}: malformed yaml ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict):
        raise LadError(f"{yaml_file}: not an ultralytics data.yaml (a mapping with names, train, val)")
    return doc


def _yolo_categories(yaml_file: Path, names) -> list[dict]:
    """Class index i -> category id i, name as data.yaml gives it (a list, or a dict by index)."""
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names or not all(isinstance(k, int) and k >= 0 for k in names):
        raise LadError(f"{yaml_file}: names must be a list of class names or a dict from class index to name")
    return [{"id": k, "name": str(names[k])} for k in sorted(names)]


def _label_file(image: Path) -> Path:
    """ultralytics' rule: the last /images/ of the path becomes /labels/, the suffix .txt."""
    text = image.as_posix()
    head, sep, tail = text.rpartition("/images/")
    return Path((head + "/labels/" + tail) if sep else text).with_suffix(".txt")


def _read_yolo_labels(label_file: Path, image: SourceImage, categories: list[dict], counts: Counts) -> None:
    if not label_file.is_file():
        counts.without_labels += 1
        return
    globox, known = _globox(), {c["id"] for c in categories}
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():  # blank lines, as ultralytics skips them (globox would refuse)
            continue
        where = f"{label_file}:{number}"
        try:
            box = globox.BoundingBox.from_yolo_v5(line, image_size=(image.width, image.height))
            corners = box.ltrb
        except globox.ParsingError:
            raise LadError(f"{where}: not a YOLO box line `class x_center y_center width height`: {line.strip()[:80]!r}") from None
        except AssertionError:  # a negative width or height: no area
            corners = None
        index = _class_index(line.split()[0])
        if index not in known:
            raise LadError(f"{where}: class {line.split()[0][:20]} is not in data.yaml's names "
                           f"(indices {min(known)}..{max(known)})")
        add_box(image, counts, index, corners)


def _class_index(token: str) -> int | None:
    """A class index as ultralytics writes it ("3", or "3.0"); None for anything else."""
    try:
        value = float(token)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


# ---------------------------------------------------------------- writing

def convert(source_format: str, src: Path, out: Path, overwrite: bool = False, split: str | None = None,
            classes_file: Path | None = None) -> dict:
    """Read SRC, write the dataset at OUT (beside any dataset lad wrote there, swapped in
    whole), and return the JSON summary: per split, images, boxes and what was clipped or skipped."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise LadError(f"{src}: not found")
    if source_format == "voc":
        categories, splits, counts = read_voc(src, split, classes_file)
    else:
        if split is not None or classes_file is not None:
            raise LadError(f"{'--split' if split is not None else '--classes'} is for VOC folders; "
                           "a YOLO data.yaml names its splits and classes")
        categories, splits, counts = read_yolo(src)
    for name, images in splits.items():
        counts[name].images = len(images)
        counts[name].negatives = sum(not any(crowd == 0 for _, _, crowd in i.annotations) for i in images)
    folder = src if src.is_dir() else src.parent  # a data.yaml given as SRC: its folder
    sources = {folder} | {image.path.parent for images in splits.values() for image in images}
    linked = 0
    with claim_output(out, DATASET, overwrite, inputs=sorted(sources)) as claim, progress_bar() as bar:
        task = bar.add_task("convert", total=sum(map(len, splits.values())), info="")
        try:
            for name, images in splits.items():
                linked += _write_split(claim.where, name, images, categories, lambda: bar.advance(task))
        except OSError as exc:
            raise LadError(f"{out}: cannot write the dataset ({exc.strerror})") from None
        claim.commit()
    return {"out": str(out), "from": source_format, "source": str(src), "categories": categories,
            "splits": {name: vars(c) for name, c in counts.items()},
            "images_hard_linked": linked, "images_copied": sum(map(len, splits.values())) - linked}


def _write_split(root: Path, name: str, images: list[SourceImage], categories: list[dict], on_image) -> int:
    """DIR/images/{name}/ and DIR/annotations/{name}.json; the number of images hard-linked."""
    image_dir = root / "images" / name
    entries, annotations, linked = [], [], 0
    for image_id, image in enumerate(images, start=1):
        target = image_dir / image.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(image.path, target)
            linked += 1
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(image.path, target)
        entries.append({"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height})
        for category, box, crowd in image.annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": crowd})
        on_image()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"info": {"description": CONVERT_MARK}, "images": entries, "annotations": annotations,
           "categories": categories}
    (root / "annotations" / f"{name}.json").write_text(json.dumps(doc))
    return linked
