"""lad predict: detections on images without annotations, exactly those of lad eval."""
import json
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from lad_cli.viz.draw import palette
from tests.conftest import invoke
from tests.test_ddp import torchrun


def by_image(records):
    out = defaultdict(list)
    for r in records:
        out[r["image_id"]].append({k: v for k, v in r.items() if k != "image_id"})
    return dict(out)


def predict_json(out):
    return json.loads((out / "predictions.json").read_text())


def test_predict_on_a_val_folder_gives_the_detections_of_eval(teacher, synth_data, tmp_path):
    evaluated = invoke("eval", "--checkpoint", teacher, "--data", synth_data, "--device", "cpu",
                       "--detections", tmp_path / "eval.json")
    assert evaluated.exit_code == 0, evaluated.output
    result = invoke("predict", synth_data / "images" / "val", "--checkpoint", teacher, "--out", tmp_path / "p",
                    "--score-thr", "0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = predict_json(tmp_path / "p")
    val = json.loads((synth_data / "annotations" / "val.json").read_text())
    coco_id = {im["file_name"]: im["id"] for im in val["images"]}
    # The file names and sizes are in predictions.json: no need for the annotation file.
    assert [(im["file_name"], im["width"], im["height"]) for im in doc["images"]] == \
        [(im["file_name"], im["width"], im["height"]) for im in sorted(val["images"], key=lambda im: im["file_name"])]
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    predicted = by_image([{**r, "image_id": coco_id[names[r["image_id"]]]} for r in doc["detections"]])
    expected = by_image(json.loads((tmp_path / "eval.json").read_text()))
    assert predicted == expected  # every box, class and score, to the last digit written
    assert sum(map(len, expected.values())) > 0
    summary = json.loads(result.stdout)
    assert summary["images"] == 6 and summary["detections"] == len(doc["detections"])
    assert sum(summary["per_class"].values()) == summary["detections"]
    assert doc["categories"] == [{"id": c["id"], "name": c["name"]} for c in sorted(val["categories"], key=lambda c: c["id"])]
    # The default threshold keeps exactly the detections scoring at least 0.3.
    high = invoke("predict", synth_data / "images" / "val", "--checkpoint", teacher, "--out", tmp_path / "p3", "--device", "cpu")
    kept = predict_json(tmp_path / "p3")["detections"]
    assert kept == [r for r in doc["detections"] if r["score"] >= 0.3] and high.exit_code == 0


def test_predict_reads_grey_rgba_and_jpeg_and_draws_each_class_in_its_colour(teacher, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub" / "deeper").mkdir(parents=True)
    Image.new("L", (70, 50), 128).save(folder / "grey.png")
    Image.new("RGBA", (90, 40), (128, 128, 128, 200)).save(folder / "alpha.png")
    Image.new("RGB", (120, 80), (128, 128, 128)).save(folder / "sub" / "deeper" / "photo.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image, and not looked at in a folder")
    result = invoke("predict", folder, str(folder / "sub" / "**" / "*.jpg"), "--checkpoint", teacher, "--out", tmp_path / "p",
                    "--score-thr", "0", "--max-det", "5", "--save-images", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = predict_json(tmp_path / "p")
    assert [(im["file_name"], im["width"], im["height"]) for im in doc["images"]] == \
        [("alpha.png", 90, 40), ("grey.png", 70, 50), ("deeper/photo.jpg", 120, 80)]
    per_image = by_image(doc["detections"])
    assert all(len(per_image.get(i, [])) <= 5 for i in range(3)) and per_image
    colour = {c["id"]: tuple(round(255 * v) for v in palette(i)) for i, c in enumerate(doc["categories"])}
    for im in doc["images"]:
        drawn = Image.open(tmp_path / "p" / im["drawn"])
        assert drawn.width == round(512 * im["width"] / min(im["width"], im["height"])) and drawn.mode == "RGB"  # scaled up
        pixels = {tuple(p) for p in np.asarray(drawn).reshape(-1, 3).tolist()}
        for r in per_image.get(im["id"], []):
            assert colour[r["category_id"]] in pixels or im["file_name"].endswith(".jpg")  # JPEG shifts colours
    assert (tmp_path / "p" / "images" / "deeper" / "photo.jpg").is_file()


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "broken.png").write_text("hello"), "broken.png: not a readable image"),
    (lambda d: (d / "empty").mkdir(), "empty: no image in this folder"),
    (lambda d: None, "missing.png: no such file or folder"),
    (lambda d: None, "*.webp: the pattern matches no image"),
])
def test_predict_refuses_bad_sources_and_writes_nothing(teacher, tmp_path, make, message):
    make(tmp_path)
    source = {"broken.png": tmp_path / "broken.png", "empty": tmp_path / "empty", "missing.png": tmp_path / "missing.png",
              "*.webp": str(tmp_path / "*.webp")}[message.split(":")[0]]
    result = invoke("predict", source, "--checkpoint", teacher, "--out", tmp_path / "p", "--device", "cpu")
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p*"))


def test_predict_keeps_an_existing_output_without_overwrite(teacher, synth_data, tmp_path):
    args = ["predict", synth_data / "images" / "val" / "000001.png", "--checkpoint", teacher, "--out", tmp_path / "p",
            "--device", "cpu"]
    assert invoke(*args).exit_code == 0
    before = (tmp_path / "p" / "predictions.json").read_bytes()
    result = invoke(*args, "--score-thr", "0.9")
    assert result.exit_code == 2 and "a predict folder is already there; pass --overwrite" in result.stderr
    assert (tmp_path / "p" / "predictions.json").read_bytes() == before
    assert invoke(*args, "--score-thr", "0.9", "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["score_threshold"] == 0.9
    assert not list(tmp_path.glob(".p*"))  # no staging, replaced or lock file left behind


def test_predict_under_torchrun_gives_what_one_process_gives(teacher, synth_data, tmp_path):
    common = [synth_data / "images" / "val", "--checkpoint", teacher, "--score-thr", "0", "--batch", "1", "--amp", "off",
              "--device", "cpu"]
    assert invoke("predict", *common, "--out", tmp_path / "one").exit_code == 0
    torchrun("predict", *common, "--out", tmp_path / "two")
    one, two = predict_json(tmp_path / "one"), predict_json(tmp_path / "two")
    assert one["images"] == two["images"] and len(one["detections"]) == len(two["detections"])
    for a, b in zip(one["detections"], two["detections"]):  # 1 vs 2 threads: float noise at most
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=2e-5) and a["bbox"] == pytest.approx(b["bbox"], abs=0.02)
