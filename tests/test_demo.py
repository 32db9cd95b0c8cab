"""The demo pipeline end to end, with its presets shrunk to a tiny detector."""
import json

from typer.testing import CliRunner

from lad_cli import demo
from lad_cli.cli import app


def test_demo_runs_the_whole_story(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DATA", {"train": 8, "val": 4, "seed": 1})
    monkeypatch.setattr(demo, "MODEL", {"arch": "resnet18", "width": 16, "head_depth": 1, "size": 64, "max_size": 96,
                                        "anchor_scale": 4})
    monkeypatch.setattr(demo, "SCHEDULE", {"batch": 4, "lr": 0.01, "warmup": 2, "log_every": 1, "workers": 0, "device": "cpu"})
    monkeypatch.setattr(demo, "TEACHER_EPOCHS", 2)
    monkeypatch.setattr(demo, "STUDENT_EPOCHS", 2)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["model", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert [line.split()[0] for line in lines[1:4]] == ["teacher", "baseline", "LAD"]
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(saved["metrics"]) == {"teacher", "baseline student", "LAD student"}
    pictures = tmp_path / "demo" / "predictions" / "images"
    assert f"{pictures}/" in result.stdout and sorted(p.name for p in pictures.iterdir()) == \
        sorted(p.name for p in (tmp_path / "demo" / "data" / "images" / "val").iterdir())  # 4 val images, all drawn
    predicted = json.loads((tmp_path / "demo" / "predictions" / "predictions.json").read_text())
    assert predicted["checkpoint"] == str(tmp_path / "demo" / "lad" / "last.pt") and len(predicted["images"]) == 4
    lad_config = json.loads((tmp_path / "demo" / "lad" / "config.json").read_text())
    base_config = json.loads((tmp_path / "demo" / "baseline" / "config.json").read_text())
    assert lad_config["cache"] and base_config["cache"] is None
    assert {k: v for k, v in lad_config.items() if k not in ("cache", "out")} == \
        {k: v for k, v in base_config.items() if k not in ("cache", "out")}
    again = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
