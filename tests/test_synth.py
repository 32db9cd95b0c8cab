"""Tests for the procedural COCO dataset in lad_cli.data.synth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from lad_cli.data.synth import CATEGORIES, Shape, render_image, write_synth


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, int]:
    root = tmp_path_factory.mktemp("synth")
    calls = []
    summary = write_synth(root, n_train=60, n_val=6, seed=0, on_image=lambda: calls.append(1))
    return root, summary, len(calls)


def test_categories_are_non_contiguous() -> None:
    ids = [c["id"] for c in CATEGORIES]
    assert len(ids) >= 6 and len(set(ids)) == len(ids)
    assert ids != list(range(1, len(ids) + 1))
    assert {c["supercategory"] for c in CATEGORIES} == {"shape"}


def test_summary_and_progress_callback(dataset: tuple[Path, dict, int]) -> None:
    root, summary, calls = dataset
    assert calls == 66
    assert summary["train"] == 60 and summary["val"] == 6
    assert summary["categories"] == [c["name"] for c in CATEGORIES]
    for split in ("train", "val"):
        assert summary["annotations"][split] == len(load(root, split)["annotations"])


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    write_synth(tmp_path / "a", 12, 6, seed=3)
    write_synth(tmp_path / "b", 12, 6, seed=3)
    write_synth(tmp_path / "c", 12, 6, seed=4)
    a, b, c = (file_hashes(tmp_path / name) for name in "abc")
    assert len(a) == 12 + 6 + 2
    assert a == b
    images_a = {h for name, h in a.items() if name.endswith(".png")}
    images_c = {h for name, h in c.items() if name.endswith(".png")}
    assert not images_a & images_c


def test_val_split_does_not_depend_on_n_train(tmp_path: Path) -> None:
    write_synth(tmp_path / "a", 5, 4, seed=7)
    write_synth(tmp_path / "b", 9, 4, seed=7)
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    val = [name for name in a if "val" in name]
    assert len(val) == 4 + 1
    assert all(a[name] == b[name] for name in val)


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotations_are_valid_coco(dataset: tuple[Path, dict, int], split: str) -> None:
    root = dataset[0]
    coco = COCO(str(root / "annotations" / f"{split}.json"))
    category_ids = {c["id"] for c in CATEGORIES}
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) == 1
    assert [img["id"] for img in coco.dataset["images"]] == list(range(1, len(coco.imgs) + 1))
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert w >= 2 and h >= 2
        assert ann["area"] == w * h
        assert ann["iscrowd"] in (0, 1)
        assert ann["category_id"] in category_ids


def test_classes_and_sizes_are_varied(dataset: tuple[Path, dict, int]) -> None:
    annotations = load(dataset[0], "train")["annotations"]
    first_40 = {a["category_id"] for a in annotations if a["image_id"] <= 40}
    assert len(first_40) >= 5
    areas = [a["area"] for a in annotations if not a["iscrowd"]]
    assert min(areas) < 32**2 and max(areas) > 96**2


def test_image_files_match_json(dataset: tuple[Path, dict, int]) -> None:
    root = dataset[0]
    for split in ("train", "val"):
        for img in load(root, split)["images"]:
            with Image.open(root / "images" / split / img["file_name"]) as image:
                assert image.mode == "RGB"
                assert image.size == (img["width"], img["height"])


def test_written_image_matches_render_image(dataset: tuple[Path, dict, int]) -> None:
    root = dataset[0]
    image, _ = render_image(np.random.default_rng([0, 1, 3]))
    written = np.asarray(Image.open(root / "images" / "val" / "000003.png"))
    assert np.array_equal(np.asarray(image), written)


def test_objects_are_drawn_inside_their_boxes() -> None:
    checked = 0
    for index in range(1, 13):
        with_objects, shapes = render_image(np.random.default_rng([11, 0, index]))
        background, _ = render_image(np.random.default_rng([11, 0, index]), with_objects=False)
        changed = np.any(np.asarray(with_objects) != np.asarray(background), axis=2)
        if not shapes:
            assert not changed.any()
            continue
        in_boxes = np.zeros_like(changed)
        for shape in shapes:
            x0, y0, x1, y1 = shape.box
            in_boxes[y0:y1, x0:x1] = True
            # Each box is well covered by drawn pixels (its object, possibly partly occluded).
            assert changed[y0:y1, x0:x1].mean() > 0.1
        assert changed[~in_boxes].sum() <= 0.01 * changed.sum()
        checked += 1
    assert checked >= 10


def first_scene(predicate: Callable[[list[Shape]], bool], limit: int = 300) -> list[Shape]:
    """Shapes of the first seed-5 training scene that satisfies the predicate."""
    for index in range(1, limit):
        _, shapes = render_image(np.random.default_rng([5, 0, index]))
        if predicate(shapes):
            return shapes
    pytest.fail("no matching scene")


def test_negative_scenes_occur() -> None:
    assert first_scene(lambda shapes: not shapes) == []


def test_crowd_region_is_exclusive() -> None:
    shapes = first_scene(lambda shapes: any(s.iscrowd for s in shapes))
    crowd = [s for s in shapes if s.iscrowd]
    assert len(crowd) == 1
    cx0, cy0, cx1, cy1 = crowd[0].box
    for s in shapes:
        if not s.iscrowd:
            x0, y0, x1, y1 = s.box
            assert x1 <= cx0 or cx1 <= x0 or y1 <= cy0 or cy1 <= y0
