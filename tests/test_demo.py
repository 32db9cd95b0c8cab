"""The demo pipeline end to end, with its presets shrunk to a tiny detector."""
import json
import re
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from lad_cli import demo
from lad_cli.cli import app
from lad_cli.viz.compare import CELL_PX, GAP_PX, compare_sheet


def test_demo_runs_the_whole_story(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DATA", {"train": 8, "val": 4, "seed": 1})
    monkeypatch.setattr(demo, "MODEL", {"arch": "resnet18", "width": 16, "head_depth": 1, "size": 64, "max_size": 96,
                                        "anchor_scale": 4})
    monkeypatch.setattr(demo, "SCHEDULE", {"batch": 4, "lr": 0.01, "warmup": 2, "log_every": 1, "workers": 0, "device": "cpu"})
    monkeypatch.setattr(demo, "TEACHER_EPOCHS", 2)
    monkeypatch.setattr(demo, "STUDENT_EPOCHS", 2)
    sheets = []
    monkeypatch.setattr(demo, "compare_sheet", lambda *args: sheets.append(args) or compare_sheet(*args))
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    # Stdout: the table, the gain measured over seeds, where the sheet is; nothing else.
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 7, result.stdout
    assert lines[0].split() == ["model", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert [line.split()[0] for line in lines[1:4]] == ["teacher", "baseline", "LAD"]
    # The gain line quotes the README's measurement over seeds, figure for figure.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    figures = re.findall(r"[+]?\d\.\d{3}(?: ± \d\.\d{3})?", lines[5])
    assert lines[5] == demo.GAIN_OVER_SEEDS and len(figures) == 3 and all(f in readme for f in figures), figures
    sheet = tmp_path / "demo" / "compare.png"
    assert lines[6].endswith(f": {sheet}")
    assert "total" in result.stderr and "teacher-train" in result.stderr  # the timings go to stderr
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(saved["metrics"]) == {"teacher", "baseline student", "LAD student"} and saved["compare"] == str(sheet)
    assert "compare.png" in saved["seconds"] and saved["total_seconds"] > 0
    # The sheet: the 4 val images (all the split has) in 3 rows, each titled with that student's AP.
    (images, rows, categories, caption), = sheets
    val = json.loads((tmp_path / "demo" / "data" / "annotations" / "val.json").read_text())
    assert [p.name for p in images] == sorted(im["file_name"] for im in val["images"])
    assert [title.split(",")[0].split(" (")[0] for title, _ in rows] == ["ground truth", "baseline student", "LAD student"]
    for (title, _), name in zip(rows[1:], ("baseline student", "LAD student")):
        assert title.endswith(f"val AP {saved['metrics'][name]['AP']:.3f}")
    gt = rows[0][1]
    assert sum(map(len, gt)) == sum(not a.get("iscrowd") for a in val["annotations"])  # every GT box drawn
    for name, (_, per_image) in zip(("baseline", "lad"), rows[1:]):  # a student's most confident, one per object
        found = json.loads((tmp_path / "demo" / name / "val_detections.json").read_text())
        for image, boxes, shown in zip(sorted(val["images"], key=lambda im: im["file_name"]), gt, per_image):
            scores = sorted((r["score"] for r in found if r["image_id"] == image["id"]), reverse=True)
            assert [r["score"] for r in shown] == scores[:len(boxes)]
    with Image.open(sheet) as png:
        assert png.format == "PNG" and png.width == 4 * (CELL_PX + GAP_PX) + GAP_PX and png.height > 3 * CELL_PX
    pictures = tmp_path / "demo" / "predictions" / "images"
    assert sorted(p.name for p in pictures.iterdir()) == \
        sorted(p.name for p in (tmp_path / "demo" / "data" / "images" / "val").iterdir())  # 4 val images, all drawn
    predicted = json.loads((tmp_path / "demo" / "predictions" / "predictions.json").read_text())
    assert predicted["score_threshold"] == demo.DRAWN_SCORE
    assert predicted["checkpoint"] == str(tmp_path / "demo" / "lad" / "last.pt") and len(predicted["images"]) == 4
    lad_config = json.loads((tmp_path / "demo" / "lad" / "config.json").read_text())
    base_config = json.loads((tmp_path / "demo" / "baseline" / "config.json").read_text())
    assert lad_config["cache"] and base_config["cache"] is None
    assert {k: v for k, v in lad_config.items() if k not in ("cache", "out")} == \
        {k: v for k, v in base_config.items() if k not in ("cache", "out")}
    again = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
