"""Issue 17's smaller fixes: non-finite PAA costs, `export --check` without GT, the public
APIs of typer/click and torch that lad relies on."""
import json
import shutil

import pytest
import torch
import typer

from lad_cli.assign.paa import paa_assign
from lad_cli.engine import loop
from lad_cli.runtime import use_bf16
from lad_cli.structures import BACKGROUND
from tests.conftest import TINY, invoke
from tests.test_assign import random_batch


def test_paa_assign_of_non_finite_predictions_is_a_valid_assignment():
    anchors, counts, cls, deltas, targets = random_batch(0, n=2, max_gts=6)
    some = torch.rand(cls.shape[:2], generator=torch.Generator().manual_seed(1)) < 0.5
    # NaN with and without its sign bit (inf - inf gives the signed one): each broke the sort once
    for nan in (torch.tensor(float("nan")), -torch.tensor(float("nan"))):
        cases = {"NaN logits": (torch.full_like(cls, nan), deltas), "NaN box deltas": (cls, torch.full_like(deltas, nan)),
                 "inf logits": (torch.full_like(cls, torch.inf), deltas),
                 "NaN logits on half the anchors": (torch.where(some[..., None], nan, cls), deltas)}
        for name, (c, d) in cases.items():
            matched = paa_assign(anchors, counts, c, d, targets)
            assert matched.shape == cls.shape[:2] and matched.dtype == torch.int64, name
            assert ((matched >= BACKGROUND) & (matched < targets.labels.shape[1])).all(), name
            # a NaN cost is never a positive; the finite candidates are still assigned
            assert name.endswith("half the anchors") == bool((matched >= 0).any()), name
            assert not (some & (matched >= 0)).any(), name


def test_non_finite_predictions_stop_training_in_one_line(synth_data, tmp_path, monkeypatch):
    """A network whose class weights overflowed to inf (its logits NaN) reaches the loop's
    documented non-finite stop, not an IndexError in PAA's sort."""
    new_detector = loop.new_detector

    def overflowed(*args, **kwargs):
        net = new_detector(*args, **kwargs)
        with torch.no_grad():
            net.head.cls_out.weight.fill_(torch.inf)
        return net

    monkeypatch.setattr(loop, "new_detector", overflowed)
    result = invoke("teacher-train", "--data", synth_data, "--out", tmp_path / "run", "--epochs", "1", "--val-split", "", *TINY)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == ("error: iteration 1: non-finite loss_cls (nan); stopped, "
                                                      "last good checkpoint: none saved yet")


def test_export_check_on_a_split_without_gt_compares_the_detections(teacher, synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    ann = data / "annotations" / "val.json"
    ann.write_text(json.dumps({**json.loads(ann.read_text()), "annotations": []}))
    result = invoke("export", "--checkpoint", teacher, "--out", tmp_path / "t.pt", "--format", "torchscript", "--check", data)
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["check"]
    assert check["images"] == check["images_compared"] == 6 and check["images_with_other_detections"] == 0
    # no GT, no AP: null as `lad eval` reports it
    assert check["eager"]["AP"] is None and check["exported"]["AP"] is None and check["AP_difference"] is None


def test_usage_errors_are_typers_own_classes():
    """cli/app.py imports UsageError and NoArgsIsHelpError from typer's vendored click (typer
    exports neither): this fails when typer moves, renames or stops raising them."""
    from lad_cli.cli.app import NoArgsIsHelpError, UsageError

    assert issubclass(typer.BadParameter, UsageError) and issubclass(NoArgsIsHelpError, UsageError)
    help_shown = invoke("cache")  # a group without its command: typer's help, no error line
    assert help_shown.exit_code == 2 and "verify" in help_shown.stdout and "error:" not in help_shown.output
    unknown = invoke("cache", "bogus")
    assert unknown.exit_code == 2 and unknown.stderr.strip() == "error: No such command 'bogus'."


def test_amp_auto_on_the_cpu_reads_torchs_public_capabilities(monkeypatch):
    """bf16 on a CPU with AMX tiles or AVX512-BF16, from torch.cpu.get_capabilities(); torch's
    private `_is_*_supported` helpers may go (deleted here)."""
    for private in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, private, raising=False)
    cpu = torch.device("cpu")
    for capabilities, bf16 in (({"amx_tile": True}, True), ({"avx512_bf16": True, "amx_tile": False}, True),
                               ({"avx512_f": True, "avx2": True}, False), ({}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda c=capabilities: c)
        assert use_bf16(cpu, "auto") == bf16, capabilities
        assert use_bf16(cpu, "off") is False and use_bf16(cpu, "bf16") is True


# --- a teacher whose outputs are not finite ---------------------------------------------------

@pytest.fixture(scope="module")
def overflowing_teacher(teacher, tmp_path_factory):
    """The session teacher with class weights so large (3e38: finite, so the reader takes them)
    that its class logits overflow to inf."""
    ckpt = torch.load(teacher, map_location="cpu", weights_only=True)
    ckpt["model"]["head.cls_out.weight"] = torch.full_like(ckpt["model"]["head.cls_out.weight"], 3e38)
    path = tmp_path_factory.mktemp("overflowing") / "teacher.pt"
    torch.save(ckpt, path)
    return path


def test_assign_refuses_a_teacher_whose_outputs_are_not_finite(overflowing_teacher, synth_data, tmp_path):
    # before: exit 0, a store whose every anchor was background
    result = invoke("assign", "--teacher", overflowing_teacher, "--data", synth_data, "--cache", tmp_path / "c.zarr",
                    "--device", "cpu", "--views", "orig")
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.output
    line = " ".join(result.stderr.split())
    assert f"{overflowing_teacher}: the teacher's outputs are NaN or infinite on image id(s) " in line
    assert "it cannot assign (every anchor would be background)" in line


def test_online_lad_stops_on_a_teacher_whose_outputs_are_not_finite(overflowing_teacher, synth_data, tmp_path):
    result = invoke("student-train", "--teacher", overflowing_teacher, "--data", synth_data, "--out", tmp_path / "run",
                    "--epochs", "1", "--val-split", "", *TINY)
    assert result.exit_code == 2, result.output
    assert "iteration 1: non-finite teacher_outputs (inf); stopped, last good checkpoint: none saved yet" in \
        " ".join(result.stderr.split())
