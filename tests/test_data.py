"""COCO reading, validation errors (one line, exit 2), views and the batch sampler."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lad_cli.cli import app
from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.dataset import DetectionDataset
from lad_cli.data.sampler import ViewBatchSampler
from lad_cli.data.views import parse_views, to_original
from lad_cli.errors import LadError

runner = CliRunner()


def write_dataset(root, images=None, annotations=None, categories=None, layout="ours"):
    """Two images (60x40 and 50x70), three annotations, non-contiguous category ids."""
    ann_dir = root / "annotations"
    img_dir = root / ("images/val" if layout == "ours" else "val2017")
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    images = images if images is not None else [
        {"id": 10, "file_name": "a.png", "width": 60, "height": 40},
        {"id": 11, "file_name": "b.png", "width": 50, "height": 70},
        {"id": 12, "file_name": "empty.png", "width": 30, "height": 30},
    ]
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (90, 120, 200)).save(img_dir / im["file_name"])
    doc = {
        "images": images,
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 5, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 10, 30.5, 20], "iscrowd": 0, "area": 600},
            {"id": 3, "image_id": 11, "category_id": 7, "bbox": [0, 0, 50, 30], "iscrowd": 1, "area": 1500},
        ],
        "categories": categories or [{"id": 7, "name": "ring"}, {"id": 3, "name": "disc"}],
    }
    name = "val.json" if layout == "ours" else "instances_val2017.json"
    (ann_dir / name).write_text(json.dumps(doc))
    return ann_dir / name


def test_reads_both_layouts_maps_categories_keeps_negatives_and_crowd(tmp_path):
    for layout in ("ours", "coco"):
        root = tmp_path / layout
        write_dataset(root, layout=layout)
        split = load_split(*locate_split(root, "val"))
        assert [c["id"] for c in split.categories] == [3, 7]  # sorted: label 0 = id 3
        a, b, empty = split.images
        assert a.labels.tolist() == [1, 0] and split.category_id(0) == 3
        np.testing.assert_allclose(a.boxes, [[5, 5, 25, 15], [30, 10, 60, 30]])  # 0.5 px overrun clipped
        assert len(b.boxes) == 0 and b.crowd.tolist() == [[0, 0, 50, 30]]
        assert len(empty.boxes) == 0 and len(empty.crowd) == 0


def test_ann_and_images_options(tmp_path):
    ann = write_dataset(tmp_path)
    split = load_split(*locate_split(None, "ignored", ann, tmp_path / "images" / "val"))
    assert len(split.images) == 3


BAD_INPUTS = {
    "malformed json": (lambda root, ann: ann.write_text('{"images": [}'), "malformed json at line 1"),
    "missing image": (lambda root, ann: (root / "images/val/b.png").unlink(), "image id 11"),
    "non-positive box": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(bbox=[5, 5, 0, 10])),
                         "annotation id 1 (image id 10): box with non-positive size"),
    "negative box": (lambda root, ann: _edit(ann, lambda d: d["annotations"][1].update(bbox=[30, 10, 20, -5])),
                     "annotation id 2 (image id 10): box with non-positive size [30, 10, 20, -5]"),
    "box outside": (lambda root, ann: _edit(ann, lambda d: d["annotations"][1].update(bbox=[30, 10, 45, 20])),
                    "annotation id 2 (image id 10): box [30, 10, 45, 20] lies outside the 60x40 image"),
    "unknown category": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(category_id=99)),
                         "annotation id 1 (image id 10): unknown category id 99"),
    "duplicate image id": (lambda root, ann: _edit(ann, lambda d: d["images"][1].update(id=10)), "duplicate image id 10"),
    "duplicate annotation id": (lambda root, ann: _edit(ann, lambda d: d["annotations"][1].update(id=1)),
                                "duplicate annotation id 1"),
    "unreadable image": (lambda root, ann: (root / "images/val/a.png").write_bytes(b"not a png"), "a.png: unreadable image (image id 10)"),
    "missing split": (lambda root, ann: ann.unlink(), "no split 'val'"),
    # strict types: what Python's json reads but is not a COCO value
    "bbox of strings": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(bbox=["1", "2", "3", "4"])),
                        "annotation id 1 (image id 10): bbox must be [x, y, width, height], four finite numbers, not ['1'"),
    "bbox with a boolean": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(bbox=[True, 2, 3, 4])),
                            "annotation id 1 (image id 10): bbox must be [x, y, width, height], four finite numbers"),
    "bbox with NaN": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(bbox=[float("nan"), 2, 3, 4])),
                      "annotation id 1 (image id 10): bbox must be [x, y, width, height], four finite numbers, not [nan"),
    "bbox with null": (lambda root, ann: _edit(ann, lambda d: d["annotations"][1].update(bbox=[30, None, 20, 5])),
                       "annotation id 2 (image id 10): bbox must be"),
    "zero width": (lambda root, ann: _edit(ann, lambda d: d["images"][0].update(width=0)),
                   "image id 10: width must be a positive integer (at most 16777216), not 0"),
    "height as a string": (lambda root, ann: _edit(ann, lambda d: d["images"][1].update(height="70")),
                           "image id 11: height must be a positive integer"),
    "image id as a string": (lambda root, ann: _edit(ann, lambda d: d["images"][1].update(id="11")),
                             "image id 11: id must be a non-negative integer"),
    "file_name out of the folder": (lambda root, ann: _edit(ann, lambda d: d["images"][0].update(file_name="../../a.png")),
                                    "image id 10: file_name '../../a.png' leads out of the image folder"),
    "absolute file_name": (lambda root, ann: _edit(ann, lambda d: d["images"][0].update(file_name=str(root / "images/val/a.png"))),
                           "image id 10: file_name '/"),
    "iscrowd as a string": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(iscrowd="0")),
                            "annotation id 1 (image id 10): iscrowd must be 0 or 1, not 0"),
    "image_id as a list": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(image_id=[10])),
                           "annotation id 1: unknown image id [10]"),
    "category id as a float": (lambda root, ann: _edit(ann, lambda d: d["annotations"][0].update(category_id=7.0)),
                               "annotation id 1 (image id 10): unknown category id 7.0"),
}


# Boxes the reader drops or clips (tests/test_real_data.py) and refuses under --strict-boxes.
STRICT_BOX_CASES = ("non-positive box", "negative box", "box outside")


def _edit(ann, change):
    doc = json.loads(ann.read_text())
    change(doc)
    ann.write_text(json.dumps(doc))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, case):
    root = tmp_path / "data"
    ann = write_dataset(root)
    # The CLI needs a checkpoint for eval; teacher-train reads the data before any heavy work.
    breaker, expected = BAD_INPUTS[case]
    breaker(root, ann)
    result = runner.invoke(app, ["teacher-train", "--data", str(root), "--split", "val", "--val-split", "",
                                 "--out", str(tmp_path / "run"), "--arch", "resnet18", "--size", "64", "--width", "16",
                                 "--head-depth", "1", "--epochs", "1", "--batch", "4", "--device", "cpu",
                                 *(["--strict-boxes"] if case in STRICT_BOX_CASES else [])])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in result.stderr, result.stderr


def test_missing_data_dir_and_mistyped_option(tmp_path):
    result = runner.invoke(app, ["teacher-train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "data directory not found" in result.stderr
    result = runner.invoke(app, ["teacher-train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--epoch", "3"])
    assert result.exit_code == 2 and "--epochs" in result.output  # click suggests the closest option


def test_view_is_deterministic_and_boxes_follow_it(synth_data):
    split = load_split(*locate_split(synth_data, "train"))
    views = parse_views("orig,flip", 64, 96)
    ds = DetectionDataset(split, views, 128)
    i = next(k for k, r in enumerate(split.images) if len(r.boxes))
    a, b = ds[(i, 0)], ds[(i, 0)]
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
    flipped = ds[(i, 1)]
    torch.testing.assert_close(flipped.image, a.image.flip(-1))
    rec = split.images[i]
    for view, sample in ((views[0], a), (views[1], flipped)):
        torch.testing.assert_close(to_original(sample.boxes, rec.height, rec.width, view), torch.from_numpy(rec.boxes), atol=1e-3, rtol=0)
    assert max(a.image.shape[1:]) <= 96 and ds.padded_shape(i, 1) == (128, 128)


def test_unknown_view_name():
    with pytest.raises(LadError, match="unknown view 'mirror'"):
        parse_views("orig,mirror", 64, 96)


def test_sampler_groups_by_shape_and_is_seeded():
    shapes = [[(128, 128), (128, 128)] if i % 3 else [(128, 256), (128, 256)] for i in range(20)]
    s = ViewBatchSampler(shapes, 4, seed=1)
    plan = s.plan(0)
    assert sorted(k[0] for batch in plan for k in batch) == list(range(20))
    assert all(len({shapes[i][v] for i, v in batch}) == 1 for batch in plan)
    assert plan == ViewBatchSampler(shapes, 4, seed=1).plan(0) and plan != s.plan(1)
    s.set_epoch(0, start=2)
    assert list(s) == plan[2:]
