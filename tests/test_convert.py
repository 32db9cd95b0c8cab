"""`lad data convert --from voc|yolo`: small VOC and YOLO folders with the quirks of real
exports, converted and read back by lad's own reader; boxes against hand-computed COCO ones."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY, invoke
from lad_cli.data.coco import load_split, locate_split


def _png(path: Path, width: int, height: int, shade: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (shade, 120, 200)).save(path)


def _voc_object(name: str, box: tuple, difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _voc_xml(path: Path, file_name: str, objects: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # <size> deliberately wrong (0x0, as some exporters write it): sizes come from the images
    path.write_text(f"<annotation><filename>{file_name}</filename><size><width>0</width><height>0</height>"
                    f"<depth>3</depth></size>{''.join(objects)}</annotation>")


def _voc_folder(root: Path) -> Path:
    """train: a (border box, difficult), b (a 0-based xmin and an overrun: clipped; one outside:
    skipped); val: c (listed, no XML: a negative). Images 100 x 50."""
    for name in "abc":
        _png(root / "JPEGImages" / f"{name}.png", 100, 50)
    _voc_xml(root / "Annotations" / "a.xml", "a.png",
             [_voc_object("cat", (1, 1, 100, 50)), _voc_object("dog", (11, 21, 30, 40), difficult=1)])
    _voc_xml(root / "Annotations" / "b.xml", "wrong-name.jpg",
             [_voc_object("dog", (0, 5, 20, 60)), _voc_object("cat", (101, 1, 120, 10))])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("c\n")
    return root


def _convert(*args) -> dict:
    result = invoke("data", "convert", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_voc_to_coco_boxes_categories_and_counts(tmp_path):
    src = _voc_folder(tmp_path / "VOC")
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\ncat\nbird\n")  # bird has no box: kept as a category
    out = tmp_path / "coco"
    summary = _convert(src, "--from", "voc", "--out", out, "--classes", classes)

    assert summary["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "bird"}]
    assert summary["splits"]["train"] == {"images": 2, "boxes": 2, "negatives": 0, "without_labels": 0,
                                          "difficult": 1, "clipped": 1, "skipped": 1}
    assert summary["splits"]["val"] == {"images": 1, "boxes": 0, "negatives": 1, "without_labels": 1,
                                        "difficult": 0, "clipped": 0, "skipped": 0}
    assert summary["images_hard_linked"] + summary["images_copied"] == 3

    train = load_split(*locate_split(out, "train"))
    assert [c["name"] for c in train.categories] == ["dog", "cat", "bird"]
    a, b = train.images
    assert (a.width, a.height, a.path.name) == (100, 50, "a.png")
    # VOC xmin=1..xmax=100 is the whole 100 px row: COCO [0, 0, 100, 50]; difficult -> iscrowd
    np.testing.assert_array_equal(a.boxes, [[0, 0, 100, 50]])
    np.testing.assert_array_equal(a.labels, [1])  # cat: label 1 (id 2)
    np.testing.assert_array_equal(a.crowd, [[10, 20, 30, 40]])
    # xmin=0 (a 0-based exporter) and ymax=60 overrun the image: clipped to [0, 4, 20, 50]
    np.testing.assert_array_equal(b.boxes, [[0, 4, 20, 50]])
    np.testing.assert_array_equal(b.labels, [0])
    assert train.dropped == [] and train.clipped == []  # nothing left for lad's reader to fix
    doc = json.loads((out / "annotations" / "train.json").read_text())
    assert [x["bbox"] for x in doc["annotations"]] == [[0, 0, 100, 50], [10, 20, 20, 20], [0, 4, 20, 46]]
    assert [x["iscrowd"] for x in doc["annotations"]] == [0, 1, 0]

    val = load_split(*locate_split(out, "val"))
    assert len(val.images) == 1 and val.images[0].boxes.shape == (0, 4)


def test_voc_without_lists_is_one_split_and_names_sorted(tmp_path):
    src = tmp_path / "VOC"
    _png(src / "JPEGImages" / "x.png", 40, 30)
    _png(src / "JPEGImages" / "y.png", 40, 30)  # no XML: a negative
    _voc_xml(src / "Annotations" / "x.xml", "x.png", [_voc_object("zebra", (2, 3, 11, 13)), _voc_object("ant", (1, 1, 4, 4))])
    summary = _convert(src, "--from", "voc", "--out", tmp_path / "out", "--split", "all")
    assert summary["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "zebra"}]
    split = load_split(*locate_split(tmp_path / "out", "all"))
    np.testing.assert_array_equal(split.images[0].boxes, [[1, 2, 11, 13], [0, 0, 4, 4]])
    np.testing.assert_array_equal(split.images[0].labels, [1, 0])
    assert split.images[1].boxes.shape == (0, 4) and summary["splits"]["all"]["without_labels"] == 1


def _yolo_folder(root: Path) -> Path:
    """names as a dict, 'bike' without boxes; train: a (border box, a box overrunning x=1:
    clipped, one of negative size: skipped), b (empty label file), c (blank lines), d (no
    label file); val: e. Images 64 x 32."""
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: /home/exporter/datasets/toy\ntrain: images/train\nval: images/val\n"
                                    "names:\n  0: person\n  1: car\n  2: bike\n")
    for name in "abcd":
        _png(root / "images" / "train" / f"{name}.png", 64, 32)
    _png(root / "images" / "val" / "e.png", 64, 32)
    labels = root / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir()
    (labels / "train" / "a.txt").write_text("0 0.5 0.5 1 1\n1 0.25 0.75 0.25 0.5\n1 1.0078125 0.5 0.25 0.5\n"
                                            "0 0.5 0.5 -0.25 0.5\n")
    (labels / "train" / "b.txt").write_text("")
    (labels / "train" / "c.txt").write_text("\n0 0.5 0.5 0.5 0.5\n\n")
    (labels / "val" / "e.txt").write_text("1 0.5 0.5 0.125 0.25\n")
    return root


def test_yolo_to_coco_boxes_categories_and_counts(tmp_path):
    src = _yolo_folder(tmp_path / "yolo")
    out = tmp_path / "coco"
    summary = _convert(src, "--from", "yolo", "--out", out)

    assert summary["categories"] == [{"id": 0, "name": "person"}, {"id": 1, "name": "car"}, {"id": 2, "name": "bike"}]
    assert summary["splits"]["train"] == {"images": 4, "boxes": 4, "negatives": 2, "without_labels": 1,
                                          "difficult": 0, "clipped": 1, "skipped": 1}
    assert summary["splits"]["val"]["boxes"] == 1

    train = load_split(*locate_split(out, "train"))
    assert [c["id"] for c in train.categories] == [0, 1, 2]
    a, b, c, d = train.images
    # centre 0.25*64=16, width 16 -> x 8..24; centre 0.75*32=24, height 16 -> y 16..32 (the border)
    # centre 1.0078125*64=64.5, width 16 -> x 56.5..72.5, clipped to 56.5..64
    np.testing.assert_array_equal(a.boxes, [[0, 0, 64, 32], [8, 16, 24, 32], [56.5, 8, 64, 24]])
    np.testing.assert_array_equal(a.labels, [0, 1, 1])
    assert b.boxes.shape == (0, 4) and d.boxes.shape == (0, 4)  # empty label file, no label file: negatives
    np.testing.assert_array_equal(c.boxes, [[16, 8, 48, 24]])
    val = load_split(*locate_split(out, "val"))
    np.testing.assert_array_equal(val.images[0].boxes, [[28, 12, 36, 20]])


def test_converted_yolo_trains(tmp_path):
    """teacher-train reads the converted dataset (one epoch of the tiny network)."""
    src = _yolo_folder(tmp_path / "yolo")
    _convert(src / "data.yaml", "--from", "yolo", "--out", tmp_path / "coco")
    result = invoke("teacher-train", "--data", tmp_path / "coco", "--out", tmp_path / "run", "--epochs", "1",
                    "--val-split", "", *TINY)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "last.pt").is_file()


def test_yolo_class_outside_names_is_refused_with_file_and_line(tmp_path):
    src = _yolo_folder(tmp_path / "yolo")
    (src / "labels" / "train" / "c.txt").write_text("0 0.5 0.5 0.5 0.5\n3 0.5 0.5 0.1 0.1\n")
    result = invoke("data", "convert", src, "--from", "yolo", "--out", tmp_path / "coco")
    assert result.exit_code == 2
    assert f"{src / 'labels' / 'train' / 'c.txt'}:2: class 3 is not in data.yaml's names (indices 0..2)" in result.stderr
    assert not (tmp_path / "coco").exists()


def test_convert_output_policy(tmp_path):
    src = _yolo_folder(tmp_path / "yolo")
    inside = invoke("data", "convert", src, "--from", "yolo", "--out", src / "coco")
    assert inside.exit_code == 2 and "inside the input" in inside.stderr
    out = tmp_path / "coco"
    _convert(src, "--from", "yolo", "--out", out)
    again = invoke("data", "convert", src, "--from", "yolo", "--out", out)
    assert again.exit_code == 2 and "pass --overwrite to replace it" in again.stderr
    (src / "labels" / "val" / "e.txt").write_text("")
    assert _convert(src, "--from", "yolo", "--out", out, "--overwrite")["splits"]["val"]["boxes"] == 0
    assert json.loads((out / "annotations" / "val.json").read_text())["annotations"] == []
    foreign = tmp_path / "mine"
    (foreign / "notes.txt").parent.mkdir()
    (foreign / "notes.txt").write_text("keep")
    refused = invoke("data", "convert", src, "--from", "yolo", "--out", foreign, "--overwrite")
    assert refused.exit_code == 2 and "is not a dataset lad wrote" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep"
