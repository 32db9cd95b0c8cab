"""`lad eval`'s scorer (faster-coco-eval) against pycocotools' COCOeval: the same twelve numbers
and per-class APs, on the embedded split and on a crafted file with crowds and empty images."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lad_cli.data.coco import load_split, locate_split
from lad_cli.engine.evaluate import METRIC_KEYS, coco_metrics


def pycocotools_stats(split, results) -> tuple[list[float], dict]:
    """The twelve COCOeval numbers and the per-category AP, straight from pycocotools."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(split.ann_file))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[gt.cats[cat_id]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else None
    return [float(s) for s in ev.stats], per_class


def noisy_detections(doc: dict, seed: int) -> list[dict]:
    """Detections a half-trained detector might give: jittered GTs (some with the wrong class),
    duplicates and false positives, random scores."""
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    cats = [c["id"] for c in doc["categories"]]
    out = []
    for a in doc["annotations"]:
        for _ in range(int(rng.integers(0, 3))):
            x, y, w, h = (np.array(a["bbox"]) + rng.normal(0, 0.15, 4) * (a["bbox"][2:] * 2)).tolist()
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice(cats))
            out.append({"image_id": a["image_id"], "category_id": cat, "bbox": [x, y, max(w, 1.0), max(h, 1.0)],
                        "score": float(rng.random())})
    for image_id, (w, h) in sizes.items():
        for _ in range(int(rng.integers(0, 4))):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            out.append({"image_id": image_id, "category_id": int(rng.choice(cats)),
                        "bbox": [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], "score": float(rng.random())})
    return out


def assert_same_as_pycocotools(split, results) -> None:
    ours = coco_metrics(split, results)
    stats, per_class = pycocotools_stats(split, results)
    for key, value in zip(METRIC_KEYS, stats[:6]):
        assert (ours[key] is None) == (value < 0), key
        if value >= 0:
            assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert ours["per_class"].keys() == per_class.keys()
    for name, value in per_class.items():
        assert (ours["per_class"][name] is None) == (value is None) and (value is None or
                                                                        ours["per_class"][name] == pytest.approx(value, abs=1e-6))
    # The six recall numbers too: the scorer's whole summary is pycocotools'.
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster
    with contextlib.redirect_stdout(io.StringIO()):
        gt = FastCOCO(str(split.ann_file))
        ev = COCOeval_faster(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose(ev.stats[:12], stats, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_scorer_equals_pycocotools_on_the_embedded_split(synth_data, seed):
    split = load_split(*locate_split(synth_data, "val"))
    assert_same_as_pycocotools(split, noisy_detections(json.loads(split.ann_file.read_text()), seed))


def test_scorer_equals_pycocotools_with_crowds_and_empty_images(tmp_path):
    """Crowd regions that swallow detections, images without annotations (with and without
    detections), a category without any GT, every size range."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 640, "height": 480} for i in (1, 2, 3, 4, 5)]
    boxes = {1: [[10, 10, 20, 20, 1, 0], [100, 100, 150, 120, 2, 0], [300, 200, 200, 200, 1, 0], [0, 0, 640, 480, 2, 1]],
             2: [[50, 50, 30, 30, 1, 0], [400, 50, 100, 80, 1, 1], [60, 300, 5, 8, 2, 0]],
             3: [[200, 100, 120, 250, 2, 0]]}  # images 4 and 5 have no annotation
    anns = []
    for img, rows in boxes.items():
        for x, y, w, h, cat, crowd in rows:
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": crowd})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "never annotated"}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "val").mkdir(parents=True)
    for im in images:
        (tmp_path / "images" / "val" / im["file_name"]).write_bytes(b"")
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(doc))
    split = load_split(*locate_split(tmp_path, "val"))
    results = noisy_detections(doc, 3)
    results += [{"image_id": 4, "category_id": 3, "bbox": [5, 5, 50, 50], "score": 0.9},  # on an empty image
                {"image_id": 1, "category_id": 2, "bbox": [100, 100, 80, 80], "score": 0.8},  # inside the crowd
                {"image_id": 2, "category_id": 1, "bbox": [402, 52, 90, 70], "score": 0.7}]  # on a crowd box
    assert_same_as_pycocotools(split, results)
