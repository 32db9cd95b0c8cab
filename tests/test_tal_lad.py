"""LAD with the task-aligned assigner: a TAL teacher, its cache (= the online teacher, entry by
entry and for 20 iterations of student losses), cross-assigner LAD, the ATSS warm-up."""
import json

import pytest
import torch

from lad_cli.assign.atss import atss_assign
from lad_cli.assign.registry import ASSIGNERS
from lad_cli.assign.tal import tal_assign
from lad_cli.distill.sources import OwnAssignment, WarmedUp
from lad_cli.model.build import load_checkpoint
from lad_cli.structures import Predictions
from tests.conftest import TINY, invoke
from tests.test_assign import random_batch
from tests.test_lad import assert_cache_is_online, assert_cached_student_is_online, info


@pytest.fixture(scope="module")
def tal_teacher(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tal") / "teacher"
    result = invoke("teacher-train", "--assigner", "tal", "--data", synth_data, "--out", out, "--epochs", "2",
                    "--val-split", "", *TINY)
    assert result.exit_code == 0, result.output
    return out / "last.pt"


@pytest.fixture(scope="module")
def tal_cache(synth_data, tal_teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("tal") / "cache.zarr"
    result = invoke("assign", "--teacher", tal_teacher, "--data", synth_data, "--cache", path, "--batch", "3",
                    "--device", "cpu", "--shard-entries", "8")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["assigner"] == "tal"  # the teacher's, by default
    return path


def test_checkpoint_and_cache_record_the_assigner(tal_teacher, tal_cache, teacher):
    assert load_checkpoint(tal_teacher)["assigner"] == {"name": "tal", **ASSIGNERS["tal"].params.to_dict()}
    assert load_checkpoint(teacher)["assigner"]["name"] == "paa"
    recorded = info(tal_cache)["assigner"]
    assert recorded["name"] == "tal" and recorded["topk"] == 13 and recorded["beta"] == 6


def test_tal_cache_holds_exactly_the_online_assignment(tal_cache, tal_teacher, synth_data):
    assert_cache_is_online(tal_cache, tal_teacher, synth_data)


def test_tal_student_from_cache_equals_online_student(tal_cache, tal_teacher, synth_data, tmp_path):
    assert_cached_student_is_online(tal_cache, tal_teacher, synth_data, tmp_path)
    config = json.loads((tmp_path / "cached" / "config.json").read_text())
    assert config["assigner"] == "tal" and config["atss_epochs"] is None  # followed the cache; LAD: no warm-up


@pytest.mark.parametrize("source", ["cache", "teacher"])
def test_other_assigner_refused_unless_cross_assigner(source, tal_cache, tal_teacher, synth_data, tmp_path):
    given = ["--cache", tal_cache] if source == "cache" else ["--teacher", tal_teacher]
    args = ["student-train", *given, "--assigner", "paa", "--data", synth_data, "--epochs", "1", "--val-split", "", *TINY]
    refused = invoke(*args, "--out", tmp_path / "refused")
    assert refused.exit_code == 2 and "assigner differs" in refused.stderr and "--cross-assigner" in refused.stderr
    crossed = invoke(*args, "--cross-assigner", "--out", tmp_path / "cross")
    assert crossed.exit_code == 0, crossed.output
    assert json.loads((tmp_path / "cross" / "config.json").read_text())["assigner"] == "paa"


def test_assign_with_another_assigner_than_the_teachers(tal_teacher, synth_data, tmp_path):
    result = invoke("assign", "--teacher", tal_teacher, "--data", synth_data, "--cache", tmp_path / "paa.zarr",
                    "--assigner", "paa", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert info(tmp_path / "paa.zarr")["assigner"]["name"] == "paa"
    stats = invoke("assign", "--teacher", tal_teacher, "--data", synth_data, "--device", "cpu")
    assert stats.exit_code == 0 and json.loads(stats.stdout)["candidates_per_gt"] is None  # TAL has no static candidates
    bad = invoke("assign", "--teacher", tal_teacher, "--data", synth_data, "--assigner", "tall", "--device", "cpu")
    assert bad.exit_code == 2 and "unknown --assigner 'tall': use paa, tal; did you mean 'tal'?" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["--alignment-from", "teacher"], "--alignment-from teacher needs --teacher"),
    (["--assigner", "atss"], "unknown --assigner 'atss': use paa, tal"),
])
def test_bad_tal_options(args, message, tal_cache, synth_data, tmp_path):
    result = invoke("student-train", "--cache", tal_cache, "--data", synth_data, "--out", tmp_path / "r", *TINY, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_cross_assigner_needs_a_teacher_or_cache(synth_data, tmp_path):
    result = invoke("student-train", "--cross-assigner", "--data", synth_data, "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 2 and "--cross-assigner needs --cache or --teacher" in result.stderr


def test_online_student_with_the_teachers_alignment(tal_teacher, synth_data, tmp_path):
    common = ["student-train", "--teacher", tal_teacher, "--data", synth_data, "--epochs", "1", "--val-split", "", *TINY]
    own = invoke(*common, "--out", tmp_path / "own")
    theirs = invoke(*common, "--alignment-from", "teacher", "--out", tmp_path / "theirs")
    assert own.exit_code == 0 and theirs.exit_code == 0, theirs.output
    first = [json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[0]) for r in ("own", "theirs")]
    assert first[0]["loss_cls"] != first[1]["loss_cls"]  # same positives, other class targets


def test_colearning_two_tal_networks(synth_data, tmp_path):
    out = tmp_path / "co"
    result = invoke("student-train", "--colearn", "--assigner", "tal", "--data", synth_data, "--out", out,
                    "--epochs", "2", *TINY)
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    # Epoch 1 is the ATSS warm-up (a third of 2 epochs, rounded): a static assignment, no switch.
    assert [("student_teaches" in r) for r in steps] == [False] * 3 + [True] * 3
    assert all(0 <= r["student_teaches"] <= 1 for r in steps[3:])
    assert load_checkpoint(out / "peer_last.pt")["assigner"]["name"] == "tal"


def test_warm_up_assigns_by_atss_then_by_the_network():
    anchors, counts, cls, deltas, targets = random_batch(2, n=2, max_gts=5)
    pred = Predictions(cls, deltas, torch.zeros(cls.shape[:2]))
    source = WarmedUp(OwnAssignment(ASSIGNERS["tal"]), epochs=2)
    batch = type("B", (), {"targets": targets})
    for epoch, expected, name in ((0, atss_assign(anchors, counts, targets), "atss"), (1, None, "atss"),
                                  (2, tal_assign(anchors, counts, cls, deltas, targets), "tal")):
        source.set_epoch(epoch)
        out = source.assign(batch, {"student": pred}, anchors, counts)
        assert out.assigner.name == name
        if expected is not None:
            assert torch.equal(out.matched_idxs, expected)
