"""Bad input besides the annotation files (tests/test_data.py has those): checkpoints, caches,
options. Each case ends with exit code 2 and one line naming what is wrong."""
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from lad_cli.cli import app
from lad_cli.data.coco import load_split, locate_split
from lad_cli.engine.checkpoint import model_checkpoint
from lad_cli.model.build import new_detector
from tests.conftest import TINY

runner = CliRunner()


@pytest.fixture(scope="module")
def files(synth_data, tmp_path_factory):
    """An untrained ResNet-18 checkpoint, the same labelled as a ResNet-34, a truncated copy,
    and a folder that is not a store."""
    folder = tmp_path_factory.mktemp("bad")
    split = load_split(*locate_split(synth_data, "train"))
    ckpt = model_checkpoint(new_detector("resnet18", len(split.categories), 16, 1, None), split,
                            SimpleNamespace(size=64, max_size=96, assigner="paa"))
    torch.save(ckpt, folder / "r18.pt")
    torch.save({**ckpt, "detector": {**ckpt["detector"], "arch": "resnet34"}}, folder / "labelled_r34.pt")
    data = (folder / "r18.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "not_a_store").mkdir()
    return folder


def resume_truncated(data, files, tmp):
    (tmp / "run").mkdir()
    (tmp / "run" / "last.pt").write_bytes((files / "truncated.pt").read_bytes())
    return ["teacher-train", "--out", tmp / "run", "--resume", "--device", "cpu"]


def student(*args):
    return lambda data, files, tmp: ["student-train", *args, "--data", data, "--out", tmp / "run", *TINY]


CASES = {
    "checkpoint of another architecture": (
        lambda data, files, tmp: ["eval", "--checkpoint", files / "labelled_r34.pt", "--data", data, "--device", "cpu"],
        "{files}/labelled_r34.pt: weights do not fit a resnet34 detector"),
    "peer checkpoint of another architecture": (
        student("--colearn", "--peer-init", "{files}/r18.pt", "--peer-arch", "resnet34"),
        "{files}/r18.pt: a resnet18 checkpoint, but --peer-arch is resnet34"),
    "truncated checkpoint": (
        lambda data, files, tmp: ["eval", "--checkpoint", files / "truncated.pt", "--data", data, "--device", "cpu"],
        "{files}/truncated.pt: unreadable checkpoint, truncated or not a lad checkpoint"),
    "truncated teacher": (
        student("--teacher", "{files}/truncated.pt"),
        "{files}/truncated.pt: unreadable checkpoint, truncated or not a lad checkpoint"),
    "truncated last.pt on resume": (
        resume_truncated,
        "{tmp}/run/last.pt: unreadable checkpoint, truncated or not a lad checkpoint"),
    "cache path that is not a store": (
        student("--cache", "{files}/not_a_store"), "{files}/not_a_store: not an assignment cache (no zarr.json)"),
    "cache path that is a file": (
        lambda data, files, tmp: ["cache", "info", files / "r18.pt"], "{files}/r18.pt: not an assignment cache (no zarr.json)"),
    "unknown view, training": (
        lambda data, files, tmp: ["teacher-train", "--views", "orig,mirror", "--data", data, "--out", tmp / "run", *TINY],
        "unknown view 'mirror': use orig, flip, orig@SIZE or flip@SIZE"),
    "unknown view, assign": (
        lambda data, files, tmp: ["assign", "--teacher", files / "r18.pt", "--views", "orig,mirror", "--data", data,
                                  "--device", "cpu"],
        "unknown view 'mirror': use orig, flip, orig@SIZE or flip@SIZE"),
    "--peer-arch without --colearn": (student("--peer-arch", "resnet34"), "--peer-arch and --peer-init need --colearn"),
    "--soft-label-weight without a teacher": (
        student("--soft-label-weight", "2"), "--soft-label-weight needs --teacher (soft labels come from a teacher)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_code_2(synth_data, files, tmp_path, case):
    build, expected = CASES[case]
    names = {"files": files, "tmp": tmp_path}
    args = [str(a).format(**names) for a in build(synth_data, files, tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected.format(**names) in errors[0], errors[0]


class _RunsCode:
    """Unpickling this calls open(marker, "w"): the marker file appears if loading runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("reader", ["eval", "teacher", "peer-init", "resume", "assign", "backbone weights"])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(synth_data, files, tmp_path, reader):
    marker = tmp_path / "marker"
    ckpt = torch.load(files / "r18.pt", weights_only=True)
    evil = tmp_path / "run" / "last.pt"
    evil.parent.mkdir()
    torch.save({**ckpt, "model": _RunsCode(marker)}, evil)
    args = {
        "eval": ["eval", "--checkpoint", evil, "--data", synth_data, "--device", "cpu"],
        "teacher": ["student-train", "--teacher", evil, "--data", synth_data, "--out", tmp_path / "s", *TINY],
        "peer-init": ["student-train", "--colearn", "--peer-init", evil, "--data", synth_data, "--out", tmp_path / "s", *TINY],
        "resume": ["teacher-train", "--out", evil.parent, "--resume", "--device", "cpu"],
        "assign": ["assign", "--teacher", evil, "--data", synth_data, "--device", "cpu"],
        "backbone weights": ["teacher-train", "--weights", evil, "--data", synth_data, "--out", tmp_path / "s", *TINY],
    }[reader]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{evil}: refused: the" in errors[0] and "(io.open), which could run code when loaded" in errors[0]
    assert not marker.exists()
