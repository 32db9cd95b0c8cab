"""Real data in (issue 17): boxes dropped or clipped as the ecosystem reads them (and refused
with --strict-boxes), 16-bit PNGs, images over PIL's decompression-bomb limit, ids beyond
int64, categories sharing a name, areas of 0, a val split without GT, recursive predict
globs over earlier outputs, and the two scorers of `lad eval`."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.dataset import DetectionDataset
from lad_cli.data.images import ImageFolder, find_images
from lad_cli.data.synth import write_synth
from lad_cli.data.views import View
from lad_cli.engine.evaluate import METRIC_KEYS, coco_metrics
from lad_cli.errors import LadError
from tests.conftest import TINY, invoke
from tests.test_provenance import edited_annotations
from tests.test_scorer import pycocotools_stats

BAD_BOX = {"bbox": [10, 10, 0, 12], "area": 0.0, "iscrowd": 0}  # zero width, as in COCO's train2017


def write_split(root, annotations, images=((1, 60, 40),), categories=((3, "disc"),)):
    """An annotation file and its image folder under root: images (id, width, height)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    doc = {"images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, w, h in images],
           "annotations": annotations, "categories": [{"id": i, "name": n} for i, n in categories]}
    for i, w, h in images:
        Image.new("RGB", (w, h), (90, 120, 200)).save(root / "images" / f"{i}.png")
    (root / "ann.json").write_text(json.dumps(doc))
    return root / "ann.json", root / "images"


def ann(id, bbox, iscrowd=0, image_id=1, category_id=3):
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd,
            "area": bbox[2] * bbox[3]}


def synth_val_with(synth_data, tmp_path, change) -> list:
    """--ann/--images options of a copy of the embedded val split changed by `change(doc)`."""
    return edited_annotations(synth_data, tmp_path, change, split="val")


def add_bad_box(doc):
    doc["annotations"].append({"id": 10**6, "image_id": doc["images"][0]["id"], "category_id": 1, **BAD_BOX})


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


# 1. Boxes as torchvision's references, mmdetection and detectron2 read them.

def test_boxes_without_area_are_dropped_and_overruns_clipped_with_one_warning(tmp_path, capsys):
    path, images = write_split(tmp_path, [
        ann(1, [5, 5, 20, 10]),
        ann(2, [5, 5, 0, 10]),  # zero width
        ann(3, [30, 10, 20, -5]),  # negative height
        ann(4, [70, 10, 5, 5]),  # wholly right of the 60x40 image
        ann(5, [50, 30, 20, 20]),  # overruns: clipped to [50, 30, 60, 40]
        ann(6, [1, 1, 0, 0], iscrowd=1),  # crowd regions follow the same rules
        ann(7, [-10, -10, 30, 30], iscrowd=1),
        ann(8, [30, 10, 30.5, 20]),  # half a pixel over: rounding, clipped and not counted
    ])
    split = load_split(path, images)
    assert split.dropped == [2, 3, 4, 6] and split.clipped == [5, 7]
    record = split.images[0]
    np.testing.assert_allclose(record.boxes, [[5, 5, 25, 15], [50, 30, 60, 40], [30, 10, 60, 30]])
    np.testing.assert_allclose(record.crowd, [[0, 0, 20, 20]])
    lines = warnings_of(capsys.readouterr().err)
    assert lines == [f"warning: {path}: 4 box(es) without area inside the image dropped (annotation ids 2, 3, 4, 6); "
                     "2 box(es) overrunning the image clipped to it (annotation ids 5, 7) (--strict-boxes refuses them)"]


def test_the_warning_names_the_first_five_ids_and_a_clean_file_warns_nothing(tmp_path, capsys):
    path, images = write_split(tmp_path, [ann(i, [5, 5, 0, 10]) for i in range(1, 9)])
    assert len(load_split(path, images).dropped) == 8
    assert "8 box(es) without area inside the image dropped (annotation ids 1, 2, 3, 4, 5, ...)" in capsys.readouterr().err
    path, images = write_split(tmp_path / "clean", [ann(1, [5, 5, 20, 10])])
    load_split(path, images)
    assert capsys.readouterr().err == ""


def test_strict_boxes_refuses_the_first_such_box(tmp_path):
    path, images = write_split(tmp_path, [ann(1, [5, 5, 20, 10]), ann(2, [50, 30, 20, 20]), ann(3, [5, 5, 0, 10])])
    with pytest.raises(LadError, match=r"annotation id 2 \(image id 1\): box \[50, 30, 20, 20\] lies outside the 60x40 "
                                       r"image \(--strict-boxes\)"):
        load_split(path, images, strict_boxes=True)


@pytest.fixture(scope="module")
def small_cache(teacher, synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "val.zarr"
    result = invoke("assign", "--teacher", teacher, "--data", synth_data, "--split", "val", "--cache", out,
                    "--device", "cpu", "--batch", "6")
    assert result.exit_code == 0, result.output
    return out


STRICT_COMMANDS = {
    "teacher-train": lambda t, c, o: ["teacher-train", "--out", o / "run", "--val-split", "", *TINY],
    "student-train": lambda t, c, o: ["student-train", "--teacher", t, "--out", o / "run", "--val-split", "", *TINY],
    "assign": lambda t, c, o: ["assign", "--teacher", t, "--device", "cpu"],
    "eval": lambda t, c, o: ["eval", "--checkpoint", t, "--device", "cpu"],
    "cache verify": lambda t, c, o: ["cache", "verify", c],
    "show-assign": lambda t, c, o: ["show-assign", "--teacher", t, "--image", 1, "--out", o / "a.png", "--device", "cpu"],
}


@pytest.mark.parametrize("command", list(STRICT_COMMANDS))
def test_every_command_reading_annotations_takes_strict_boxes(teacher, small_cache, synth_data, tmp_path, command):
    data = synth_val_with(synth_data, tmp_path, add_bad_box)
    result = invoke(*STRICT_COMMANDS[command](teacher, small_cache, tmp_path), *data, "--strict-boxes")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'val.json'}: annotation id 1000000 (image id 1): box with non-positive size [10, 10, 0, 12] "
        "(--strict-boxes)"], result.stderr


def test_eval_scores_the_annotation_file_as_cocoeval_reads_it(tmp_path):
    """The dropped box stays in what is scored: a perfect detector of the boxes training
    keeps misses it (AP below 1, as pycocotools scores the file), and the clipped box is
    matched as the file has it."""
    boxes = [[5, 5, 20, 10, 3], [30, 8, 25, 25, 3], [50, 30, 20, 20, 4]]
    path, images = write_split(tmp_path, [*(ann(k + 1, b[:4], category_id=b[4]) for k, b in enumerate(boxes)),
                                          ann(9, [10, 10, 0, 12])], categories=((3, "disc"), (4, "ring")))
    split = load_split(path, images)
    assert split.dropped == [9] and split.clipped == [3]
    results = [{"image_id": 1, "category_id": c, "bbox": [x, y, w, h], "score": 0.9} for x, y, w, h, c in boxes]
    metrics = coco_metrics(split, results)
    stats, per_class = pycocotools_stats(split, results)
    assert [metrics[k] for k in METRIC_KEYS] == pytest.approx([None if s < 0 else s for s in stats[:6]], abs=1e-6)
    assert metrics["per_class"] == pytest.approx(per_class, abs=1e-6)
    assert metrics["per_class"]["disc"] < 1 and metrics["per_class"]["ring"] == pytest.approx(1.0)


def test_lad_eval_runs_on_a_file_with_a_degenerate_box(teacher, synth_data, tmp_path):
    data = synth_val_with(synth_data, tmp_path, add_bad_box)
    result = invoke("eval", "--checkpoint", teacher, *data, "--device", "cpu", "--json", "-",
                    "--detections", tmp_path / "det.json")
    assert result.exit_code == 0, result.output
    assert warnings_of(result.stderr) == [
        f"warning: {tmp_path / 'val.json'}: 1 box(es) without area inside the image dropped (annotation ids 1000000) "
        "(--strict-boxes refuses them)"]
    metrics = json.loads(result.stdout)
    split = load_split(tmp_path / "val.json", synth_data / "images" / "val")
    stats, _ = pycocotools_stats(split, json.loads((tmp_path / "det.json").read_text()))
    assert [metrics[k] for k in METRIC_KEYS] == pytest.approx([None if s < 0 else s for s in stats[:6]], abs=1e-6)


# 2. 16-bit PNGs.

def test_16_bit_png_is_read_at_its_contrast_in_training_and_predict(tmp_path):
    grey = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)  # 0 .. 64773
    path, images = write_split(tmp_path, [ann(1, [5, 5, 20, 10])])
    Image.fromarray(grey).save(images / "1.png")
    assert Image.open(images / "1.png").mode == "I;16"
    split = load_split(path, images)
    view = View("orig", 40, 60, False)
    dataset = DetectionDataset(split, [view], 32)
    expected = torch.from_numpy((grey >> 8).astype(np.uint8)).expand(3, -1, -1)
    assert torch.equal(dataset.read_image(0), expected)  # not all white
    folder = ImageFolder(find_images([str(images / "1.png")]), view, 32)  # what lad predict reads
    assert torch.equal(folder[(0, 0)].image, dataset[(0, 0)].image)


# 3. PIL's decompression-bomb limit.

def test_images_over_the_decompression_bomb_limit_are_one_line(teacher, synth_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the embedded images are over twice this
    limit = "image of more than 2000 pixels, PIL's decompression-bomb limit (twice PIL.Image.MAX_IMAGE_PIXELS)"
    result = invoke("predict", synth_data / "images" / "val", "--checkpoint", teacher, "--out", tmp_path / "p",
                    "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith(f"error: {synth_data / 'images' / 'val' / '000001.png'}: {limit}")
    result = invoke("teacher-train", "--data", synth_data, "--out", tmp_path / "run", "--val-split", "",
                    "--epochs", "1", *TINY)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and limit in errors[0] and "(image id " in errors[0], result.stderr


# 4. Ids beyond int64.

@pytest.mark.parametrize("field, message", [
    ("image", "image id 9223372036854775808: id must be a non-negative integer below 2**63"),
    ("annotation", "annotation id 9223372036854775808 does not fit a 64-bit integer"),
    ("category", "category id 9223372036854775808 does not fit a 64-bit integer"),
])
def test_ids_beyond_int64_are_refused_naming_them(tmp_path, field, message):
    big = 2**63
    ids = {"image": 1, "annotation": 1, "category": 3, field: big}
    path, images = write_split(tmp_path, [ann(ids["annotation"], [5, 5, 20, 10], image_id=ids["image"],
                                              category_id=ids["category"])],
                               images=((ids["image"], 60, 40),), categories=((ids["category"], "disc"),))
    with pytest.raises(LadError) as caught:
        load_split(path, images)
    assert str(caught.value) == f"{path}: {message}" + (" (a 64-bit integer)" if field == "image" else
                                                         " (-2**63 to 2**63 - 1)")


def test_the_largest_image_id_goes_through_assign_and_the_cache(teacher, synth_data, tmp_path):
    def largest(doc):
        old = doc["images"][0]["id"]
        doc["images"][0]["id"] = 2**63 - 1
        for a in doc["annotations"]:
            a["image_id"] = 2**63 - 1 if a["image_id"] == old else a["image_id"]

    data = synth_val_with(synth_data, tmp_path, largest)
    store = tmp_path / "c.zarr"
    assert invoke("assign", "--teacher", teacher, *data, "--cache", store, "--device", "cpu").exit_code == 0
    info = invoke("cache", "info", store, "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["complete"] is True, info.output
    verified = invoke("cache", "verify", store, *data)
    assert verified.exit_code == 0 and verified.stdout.startswith("ok: 12 entries"), verified.output


# 5. Categories sharing a name.

def test_categories_sharing_a_name_are_scored_apart(tmp_path):
    path, images = write_split(tmp_path, [ann(1, [5, 5, 20, 10], category_id=3), ann(2, [30, 8, 25, 25], category_id=4)],
                               categories=((3, "disc"), (4, "disc"), (5, "ring")))
    results = [{"image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10], "score": 0.9}]  # disc 4 missed
    metrics = coco_metrics(load_split(path, images), results)
    assert metrics["per_class"] == {"disc (id 3)": pytest.approx(1.0), "disc (id 4)": 0.0, "ring": None}


def test_predict_counts_categories_sharing_a_name_apart(teacher, synth_data, tmp_path):
    checkpoint = torch.load(teacher, weights_only=True)
    names = [c["name"] for c in checkpoint["categories"]]
    checkpoint["categories"][1]["name"] = names[0]  # two "disc"
    torch.save(checkpoint, tmp_path / "same_names.pt")
    result = invoke("predict", synth_data / "images" / "val", "--checkpoint", tmp_path / "same_names.pt",
                    "--out", tmp_path / "p", "--score-thr", "0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    ids = [c["id"] for c in checkpoint["categories"]]
    assert list(summary["per_class"]) == [f"{names[0]} (id {ids[0]})", f"{names[0]} (id {ids[1]})", *names[2:]]
    detections = json.loads((tmp_path / "p" / "predictions.json").read_text())["detections"]
    assert list(summary["per_class"].values()) == [sum(d["category_id"] == i for d in detections) for i in ids]


# 6. Areas of 0.

def test_eval_warns_when_every_area_is_zero(teacher, synth_data, tmp_path):
    data = synth_val_with(synth_data, tmp_path, lambda doc: [a.update(area=0) for a in doc["annotations"]])
    result = invoke("eval", "--checkpoint", teacher, *data, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert warnings_of(result.stderr) == [
        f"warning: {tmp_path / 'val.json'}: every annotation has area 0, so APs/APm/APl count every box as small "
        "(COCOeval sizes GT by the file's area field; AP, AP50, AP75 are unaffected)"]
    plain = invoke("eval", "--checkpoint", teacher, "--data", synth_data, "--device", "cpu")
    assert plain.exit_code == 0 and warnings_of(plain.stderr) == []


# 7. A val split without GT.

def test_training_validates_on_a_val_split_without_annotations(tmp_path):
    data = tmp_path / "data"
    write_synth(data, 4, 2, seed=3)
    val = json.loads((data / "annotations" / "val.json").read_text())
    (data / "annotations" / "val.json").write_text(json.dumps({**val, "annotations": []}))
    result = invoke("teacher-train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", *TINY)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["val"]["AP"] is None and summary["val"]["per_class"]["disc"] is None
    assert "epoch 1 student: AP - (no GT)  AP50 - (no GT)" in result.stderr


# 8. Recursive predict globs.

def test_a_recursive_predict_glob_leaves_out_earlier_predict_outputs(teacher, synth_data, tmp_path):
    shutil.copytree(synth_data / "images" / "val", tmp_path / "dir")
    files = sorted((tmp_path / "dir").iterdir())  # named one by one, the output may go beside them
    first = invoke("predict", *files, "--checkpoint", teacher, "--out", tmp_path / "dir" / "pred",
                   "--save-images", "--device", "cpu")
    assert first.exit_code == 0 and len(list((tmp_path / "dir" / "pred" / "images").iterdir())) == 6, first.output
    again = invoke("predict", f"{tmp_path}/dir/**/*.png", "--checkpoint", teacher, "--out", tmp_path / "pred2",
                   "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["images"] == 6
    assert f"6 image(s) in lad predict output folders left out ({tmp_path / 'dir' / 'pred'})" in again.stderr
    # A folder that only holds a file named predictions.json is not lad's output: read as any.
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "other" / "sub" / "predictions.json").write_text("[]")
    shutil.copy(synth_data / "images" / "val" / "000001.png", tmp_path / "other" / "sub")
    assert len(find_images([f"{tmp_path}/other/**/*.png"])) == 1


# 9. The scorers.

def test_scorer_pycocotools_gives_the_numbers_of_the_default(teacher, synth_data):
    runs = {}
    for scorer in ("faster-coco-eval", "pycocotools"):
        result = invoke("eval", "--checkpoint", teacher, "--data", synth_data, "--device", "cpu", "--json", "-",
                        "--scorer", scorer)
        assert result.exit_code == 0, result.output
        runs[scorer] = json.loads(result.stdout)
    fast, reference = runs["faster-coco-eval"], runs["pycocotools"]
    assert fast.keys() == reference.keys() and fast["per_class"].keys() == reference["per_class"].keys()
    for key in METRIC_KEYS:
        assert fast[key] == pytest.approx(reference[key], abs=1e-6), key
    assert fast["per_class"] == pytest.approx(reference["per_class"], abs=1e-6)


def test_both_scorers_score_no_detection_alike(tmp_path):
    path, images = write_split(tmp_path, [ann(1, [5, 5, 10, 10]), ann(2, [20, 5, 35, 33])],
                               categories=((3, "disc"), (4, "ring")))
    split = load_split(path, images)
    assert coco_metrics(split, [], "pycocotools") == coco_metrics(split, []) == {
        "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": None, "per_class": {"disc": 0.0, "ring": None}}
