"""teacher-train and eval end to end on a tiny detector: run folder, resume, metrics, COCO outputs."""
import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from lad_cli.cli import app
from lad_cli.engine import loop
from lad_cli.model.build import load_checkpoint
from tests.conftest import TINY

runner = CliRunner()


def teacher_train(data, out, *extra):
    return runner.invoke(app, ["teacher-train", "--data", str(data), "--out", str(out), "--epochs", "2", *TINY, *extra])


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    result = teacher_train(synth_data, out)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_run_folder_contents(trained):
    out, summary = trained
    assert summary["iterations"] == 6 and set(summary["val"]) >= {"AP", "AP50", "per_class"}
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["epochs"] == 2 and config["batch"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "AP" in r]
    assert [r["iteration"] for r in steps] == list(range(1, 7))
    assert all({"iteration", "epoch", "lr", "loss", "loss_cls", "loss_box", "loss_iou"} <= set(r) for r in steps)
    assert all(abs(r["loss"] - r["loss_cls"] - r["loss_box"] - r["loss_iou"]) < 1e-4 for r in steps)
    assert [r["epoch"] for r in epochs] == [1, 2] and all({"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(r) for r in epochs)
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / name)
        assert ckpt["detector"]["arch"] == "resnet18" and [c["id"] for c in ckpt["categories"]] == [1, 2, 4, 5, 7, 9]
    assert not list(out.glob(".*.partial"))


def test_existing_run_is_not_overwritten(trained, synth_data):
    out, _ = trained
    before = (out / "last.pt").read_bytes()
    result = teacher_train(synth_data, out)
    assert result.exit_code == 2 and "--resume" in result.stderr and "--overwrite" in result.stderr
    assert (out / "last.pt").read_bytes() == before


def test_resume_after_interruption_gives_the_same_weights(trained, synth_data, tmp_path, monkeypatch):
    out_ref, _ = trained
    real_step = loop.train_step
    calls = {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-epoch 2 (3 batches per epoch)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crashing_step)
    result = teacher_train(synth_data, tmp_path / "run", "--save-every", "1")
    assert result.exit_code != 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["iteration"] == 4
    monkeypatch.setattr(loop, "train_step", real_step)
    result = runner.invoke(app, ["teacher-train", "--out", str(tmp_path / "run"), "--resume", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ref, got = load_checkpoint(out_ref / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    for k, v in ref["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=1e-6, msg=k)
    ref_lines = (out_ref / "metrics.jsonl").read_text().splitlines()
    got_lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in ("eval_seconds", "data_wait")} for x in lines]
    assert strip(got_lines) == strip(ref_lines)


def test_eval_json_and_detections(trained, synth_data, tmp_path):
    out, _ = trained
    result = runner.invoke(app, ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(synth_data),
                                 "--json", str(tmp_path / "m.json"), "--detections", str(tmp_path / "d.json"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    assert all(v is None or 0 <= v <= 1 for k, v in metrics.items() if k != "per_class")
    assert set(metrics["per_class"]) == {"disc", "square", "triangle", "star", "ring", "cross"}
    assert "AP50" in result.stdout and "ring" in result.stdout
    gt = COCO(str(synth_data / "annotations" / "val.json"))
    dets = json.loads((tmp_path / "d.json").read_text())
    assert dets and gt.loadRes(str(tmp_path / "d.json")).getAnnIds()


def test_eval_of_perfect_detections_is_one(synth_data):
    from lad_cli.data.coco import load_split, locate_split
    from lad_cli.engine.evaluate import coco_metrics

    split = load_split(*locate_split(synth_data, "val"))
    doc = json.loads(split.ann_file.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in doc["annotations"] if not a["iscrowd"]]
    metrics = coco_metrics(split, perfect)
    assert metrics["AP"] == pytest.approx(1.0) and all(v == pytest.approx(1.0) for v in metrics["per_class"].values() if v is not None)
    assert coco_metrics(split, [])["AP"] == 0.0


def test_eval_without_detections_is_null_where_the_split_has_no_gt(tmp_path):
    """No detections at all: 0 where the split has GT, None where it has none of that size or
    class, as pycocotools scores a single detection that matches nothing."""
    from PIL import Image

    from lad_cli.data.coco import load_split
    from lad_cli.engine.evaluate import METRIC_KEYS, coco_metrics

    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (100, 80)).save(tmp_path / "images" / name)
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                      {"id": 2, "file_name": "b.png", "width": 100, "height": 80}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
                           {"id": 2, "image_id": 2, "category_id": 3, "bbox": [20, 20, 40, 40], "area": 1600, "iscrowd": 0}],
           "categories": [{"id": 3, "name": "disc"}, {"id": 4, "name": "ring"}]}
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(doc))  # one small and one medium disc; no ring, nothing large
    metrics = coco_metrics(load_split(ann, tmp_path / "images"), [])

    gt = COCO(str(ann))
    miss = gt.loadRes([{"image_id": 1, "category_id": 3, "bbox": [80, 60, 5, 5], "score": 0.5}])
    ev = COCOeval(gt, miss, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert {k: metrics[k] for k in METRIC_KEYS} == {k: None if v < 0 else v for k, v in zip(METRIC_KEYS, ev.stats[:6])}
    assert metrics["APl"] is None and metrics["APs"] == metrics["APm"] == 0.0
    assert metrics["per_class"] == {"disc": 0.0, "ring": None}
