"""Options: values outside their fixed set, option names taken as values, and --resume against
the run's configuration. Each mistake ends before any work with exit code 2 and one line."""
import json
import subprocess
import sys

import pytest

from tests.conftest import TINY, invoke


def only_error_line(result) -> str:
    """stderr is exactly one `error: ...` line (no usage panel, no traceback)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def train(data, out, *args, command="teacher-train"):
    return [command, "--data", data, "--out", out, *TINY, *args]


CHOICES = {  # option and typo -> the line, with the closest valid value
    "--amp": ("bf61", "unknown --amp 'bf61': use auto, bf16, off; did you mean 'bf16'?"),
    "--box-weighting": ("iuo", "unknown --box-weighting 'iuo': use iou, mean; did you mean 'iou'?"),
    "--arch": ("resnet19", "unknown --arch 'resnet19': use resnet18, resnet34, resnet50, resnet101, mobilenet_v2, mobilenet_v3_large; did you mean 'resnet18'?"),
    "--device": ("meta", "unknown device 'meta': use auto, cpu, cuda, cuda:N"),
    "--views": ("orig,fliip", "unknown view 'fliip': use orig, flip, orig@SIZE or flip@SIZE; did you mean 'flip'?"),
    "--lr-steps": ("8,x", "--lr-steps '8,x': epochs as integers separated by commas, e.g. 8,11"),
}
STUDENT_CHOICES = {
    "--switch": ("iter", "unknown --switch 'iter': use gt-level, iteration; did you mean 'iteration'?"),
    "--assign-from": ("teachr", "unknown --assign-from 'teachr': use teacher, student; did you mean 'teacher'?"),
    "--peer-arch": ("resnet5O", "unknown --peer-arch 'resnet5O': use resnet18, resnet34, resnet50, resnet101, mobilenet_v2, mobilenet_v3_large; did you mean 'resnet50'?"),
}


@pytest.mark.parametrize("command, option", [("teacher-train", o) for o in CHOICES] + [("student-train", o) for o in STUDENT_CHOICES])
def test_value_outside_its_choices_is_refused_before_any_work(synth_data, tmp_path, command, option):
    value, expected = {**CHOICES, **STUDENT_CHOICES}[option]
    line = only_error_line(invoke(*train(synth_data, tmp_path / "run", option, value, command=command)))
    assert line == f"error: {expected}"
    assert not (tmp_path / "run").exists()  # nothing was made: the run folder is the first thing a run writes


@pytest.mark.parametrize("args, expected", [
    (["eval", "--checkpoint", "x.pt", "--amp", "of"], "unknown --amp 'of': use auto, bf16, off; did you mean 'off'?"),
    (["export", "--checkpoint", "x.pt", "--out", "y.onnx", "--format", "onx"], "unknown --format 'onx': use onnx, torchscript; did you mean 'onnx'?"),
    (["assign", "--teacher", "x.pt", "--views", "orig,mirror"], "unknown view 'mirror': use orig, flip, orig@SIZE or flip@SIZE"),
    (["show-assign", "--teacher", "x.pt", "--image", "1", "--out", "a.png", "--view", "flip@0"], "view 'flip@0': its shorter side must be from 32 to 8192"),
    (["teacher-train", "--out", "r", "--amps", "off"], "No such option: --amps (Possible options: --amp, --warmup)"),
    # `lad assign --cache --teacher T`: --cache would take "--teacher" as its path
    (["assign", "--cache", "--teacher", "t.pt", "--data", "d"], "--cache takes the store path (--cache OUT.zarr), not the option name --teacher"),
    (["student-train", "--out", "r", "--cache", "--teacher", "t.pt"], "--cache takes the store path, not the option name --teacher"),
])
def test_usage_mistakes_are_one_line(args, expected):
    assert expected in only_error_line(invoke(*args))


def test_cli_declares_its_choices_without_importing_torch():
    code = "import sys; from lad_cli.cli import app; import typer.main; typer.main.get_command(app); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# --- --resume and the run's configuration ---------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    result = invoke(*train(synth_data, out, "--epochs", "1", "--val-split", ""))
    assert result.exit_code == 0, result.output
    return out


def copy_run(run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


def test_a_flag_contradicting_the_resumed_run_is_refused_naming_it(synth_data, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = (run / "last.pt").read_bytes()
    line = only_error_line(invoke(*train(synth_data, run, "--epochs", "1", "--val-split", "", "--resume", "--lr", "0.5")))
    assert "--lr 0.5 contradicts the run being resumed (lr None in" in line and "config.json" in line
    line = only_error_line(invoke(*train(synth_data, run, "--epochs", "3", "--val-split", "", "--resume")))
    assert "--epochs 3 contradicts the run being resumed (epochs 1 in" in line
    assert (run / "last.pt").read_bytes() == before


def test_resume_takes_the_options_that_do_not_change_what_is_computed(synth_data, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    # the same values as the run, and the machine's and bookkeeping options anew
    result = invoke(*train(synth_data, run, "--epochs", "1", "--val-split", "", "--resume", "--skip-nonfinite", "2",
                           "--save-every", "5"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["iterations"] == 3


def test_config_json_and_last_pt_are_one_truth(synth_data, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 3}))  # edited after the run started
    line = only_error_line(invoke("teacher-train", "--out", run, "--resume"))
    assert f"{run}/config.json and last.pt disagree on epochs (3 vs 1)" in line
    (run / "config.json").unlink()  # lost: last.pt's copy is the run's, and is written back
    result = invoke("teacher-train", "--out", run, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text()) == config
