"""Training runs check what they will read before the first step, and --resume continues only
on the data the run started on: val images, changed annotation files, caches and teachers, a
metrics.jsonl cut by a power cut, option values that cannot train, and what a warmed-up
source records."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from lad_cli.engine import loop
from tests.conftest import TINY, invoke


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.output, result.output
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def one_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    return lines[0]


def train(data, out, *extra, command="teacher-train"):
    return invoke(command, "--data", data, "--out", out, "--epochs", "1", *TINY, *extra)


@pytest.fixture
def data(synth_data, tmp_path) -> Path:
    """A copy of the synth dataset this test may change."""
    return Path(shutil.copytree(synth_data, tmp_path / "data"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- val images are checked before the first step --------------------------------------------

def test_a_val_image_of_another_size_stops_the_run_before_its_first_step(data, tmp_path):
    val = json.loads((data / "annotations" / "val.json").read_text())
    image = data / "images" / "val" / val["images"][-1]["file_name"]
    with Image.open(image) as im:
        im.resize((im.width + 8, im.height)).save(image)
    result = train(data, tmp_path / "run")
    line = one_error(result)
    assert line.startswith(f"error: {image}: image is ") and "but val.json says" in line, line
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == "", "trained before finding the val image"


# --- --resume on other data is refused --------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val"])
def test_resume_after_the_annotation_file_changed_is_refused_naming_it(data, tmp_path, split):
    assert train(data, tmp_path / "run").exit_code == 0
    ann = data / "annotations" / f"{split}.json"
    doc = json.loads(ann.read_text())
    ann.write_text(json.dumps({**doc, "info": {"edited": True}}))  # same images and boxes, another file
    before = (tmp_path / "run" / "last.pt").read_bytes()
    line = one_error(invoke("teacher-train", "--out", tmp_path / "run", "--resume", "--device", "cpu"))
    assert line.startswith(f"error: {ann}: changed since the run started") and "resumed on the data it started on" in line
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def rewritten_teacher(teacher: Path, to: Path, scale: float = 1.0) -> Path:
    """The teacher checkpoint written anew (another file), its weights times `scale`."""
    ckpt = torch.load(teacher, weights_only=True)
    ckpt["model"] = {k: v * scale if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    ckpt["note"] = "rewritten"
    torch.save(ckpt, to)
    return to


def test_resume_after_the_teacher_changed_is_refused_naming_it(synth_data, teacher, tmp_path):
    mine = Path(shutil.copy(teacher, tmp_path / "teacher.pt"))
    assert train(synth_data, tmp_path / "run", "--teacher", mine, "--val-split", "", command="student-train").exit_code == 0
    rewritten_teacher(teacher, mine)
    line = one_error(invoke("student-train", "--out", tmp_path / "run", "--resume", "--device", "cpu"))
    assert line.startswith(f"error: {mine}: the teacher changed since the run started (teacher_sha256 "), line


def test_resume_after_the_cache_changed_is_refused_naming_it(synth_data, teacher, tmp_path):
    cache = tmp_path / "c.zarr"
    assign = ["assign", "--data", synth_data, "--cache", cache, "--device", "cpu"]
    assert invoke(*assign, "--teacher", teacher).exit_code == 0
    assert train(synth_data, tmp_path / "run", "--cache", cache, "--val-split", "", command="student-train").exit_code == 0
    other = rewritten_teacher(teacher, tmp_path / "other.pt", scale=0.5)
    assert invoke(*assign, "--teacher", other, "--overwrite").exit_code == 0
    line = one_error(invoke("student-train", "--out", tmp_path / "run", "--resume", "--device", "cpu"))
    assert line.startswith(f"error: {cache}: the cache changed since the run started ("), line


# --- metrics.jsonl cut by a power cut ---------------------------------------------------------

@pytest.fixture
def interrupted(synth_data, tmp_path, monkeypatch) -> Path:
    """A 2-epoch run (3 iterations each, one line per iteration) killed at iteration 5, with
    last.pt saved at iteration 4 (4 lines)."""
    real_step, calls = loop.train_step, {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crashing_step)
    run = tmp_path / "run"
    result = invoke("teacher-train", "--data", synth_data, "--out", run, *TINY, "--epochs", "2", "--val-split", "",
                    "--save-every", "1")
    assert result.exit_code != 0 and len((run / "metrics.jsonl").read_text().splitlines()) == 4
    monkeypatch.setattr(loop, "train_step", real_step)
    return run


@pytest.mark.parametrize("cut", ["mid-line", "at a line end"])
def test_resume_cuts_a_broken_metrics_file_back_and_says_what_is_lost(interrupted, tmp_path, cut):
    metrics = interrupted / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    kept = "".join(lines[:2]) + (lines[2][: len(lines[2]) // 2] if cut == "mid-line" else "")
    metrics.write_text(kept)  # what a power cut can leave: lines 3 and 4 (or a half of 3) lost
    result = invoke("teacher-train", "--out", interrupted, "--resume", "--device", "cpu")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "lines last.pt saw are lost" in line]
    assert warnings == [f"{metrics}: 2 of the 4 lines last.pt saw are lost (the file was cut short or ends mid-line) "
                        "and cannot be recovered; logging continues from iteration 4"], result.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 5, 6]
    assert invoke("plot", interrupted, "--out", tmp_path / "curves.png").exit_code == 0


def test_resume_drops_the_lines_logged_after_the_checkpoint(interrupted):
    metrics = interrupted / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"iteration": 5, "epoch": 2, "loss": 1.0}\n{"iteration": 6, "ep')  # after last.pt, then cut
    result = invoke("teacher-train", "--out", interrupted, "--resume", "--device", "cpu")
    assert result.exit_code == 0 and "lost" not in result.stderr, result.output
    assert [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


# --- option values that cannot train: one line while parsing ---------------------------------

BAD_OPTIONS = {
    "negative lr": (["--lr", "-0.01"], "error: --lr -0.01: the learning rate must be a finite number >= 0"),
    "nan lr": (["--lr", "nan"], "error: --lr nan: the learning rate must be a finite number >= 0"),
    "negative seed": (["--seed", "-1"], "error: --seed -1: a seed is an integer from 0 to 2**64 - 1"),
    "seed 2**70": (["--seed", str(2**70)], f"error: --seed {2**70}: a seed is an integer from 0 to 2**64 - 1"),
    "size 20000": (["--size", "20000", "--max-size", "20000"], "error: --size 20000: must be from 32 to 8192 pixels"),
    "max-size 20000": (["--max-size", "20000"], "error: --max-size 20000: must be from 32 to 8192 pixels"),
    "width 100": (["--width", "100"], "error: --width 100: channels must be a multiple of 8 (of 32 above 256)"),
    "width 264": (["--width", "264"], "error: --width 264: channels must be a multiple of 8 (of 32 above 256)"),
    "negative clip": (["--clip", "-1"], "error: --clip -1.0: the max gradient norm must be > 0 (inf: no clipping)"),
    "zero clip": (["--clip", "0"], "error: --clip 0.0: the max gradient norm must be > 0 (inf: no clipping)"),
    "view under 32": (["--views", "orig@1"], "error: view 'orig@1': its shorter side must be from 32 to 8192, as --size"),
    "view over 8192": (["--views", "orig,flip@9000"], "error: view 'flip@9000': its shorter side must be from 32 to 8192"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
@pytest.mark.parametrize("command", ["teacher-train", "student-train"])
def test_option_values_that_cannot_train_are_refused_before_any_work(synth_data, tmp_path, case, command):
    options, expected = BAD_OPTIONS[case]
    line = one_error(invoke(command, "--data", synth_data, "--out", tmp_path / "run", "--epochs", "1", *TINY, *options))
    assert line.startswith(expected), line
    assert not (tmp_path / "run").exists()


def test_predict_refuses_a_size_whose_tensors_cannot_fit(synth_data, teacher, tmp_path):
    line = one_error(invoke("predict", synth_data / "images" / "val", "--checkpoint", teacher, "--out", tmp_path / "p",
                            "--size", "20000", "--max-size", "20000", "--device", "cpu"))
    assert line == "error: --size 20000: must be from 32 to 8192 pixels", line
    assert not (tmp_path / "p").exists()


def test_val_split_given_with_ann_is_refused_and_the_default_still_trains(synth_data, tmp_path):
    files = ["--ann", synth_data / "annotations" / "train.json", "--images", synth_data / "images" / "train"]
    line = one_error(invoke("teacher-train", *files, "--val-split", "val", "--out", tmp_path / "a", *TINY))
    assert line == "error: --val-split 'val' needs --data (--ann/--images name the training split only)", line
    # Left at its default, --val-split means no validation; seeds and --clip take their whole range.
    result = invoke("teacher-train", *files, "--out", tmp_path / "b", "--epochs", "1", *TINY,
                    "--seed", str(2**64 - 1), "--clip", "inf")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["best_AP"] is None


# --- a warmed-up source records what it is ----------------------------------------------------

def test_a_warmed_up_teacher_source_is_recorded_with_its_teacher(synth_data, teacher, tmp_path):
    result = train(synth_data, tmp_path / "run", "--teacher", teacher, "--atss-epochs", "1", "--val-split", "",
                   command="student-train")
    assert result.exit_code == 0, result.output
    info = invoke("info", tmp_path / "run" / "last.pt", "--json")
    assert info.exit_code == 0, info.output
    assignment = json.loads(info.stdout)["training"]["assignment"]
    assert assignment["source"] == "teacher" and assignment["teacher_sha256"] == sha256(teacher), assignment
    assert assignment["atss_warmup_epochs"] == 1, assignment
