"""LAD with the task-aligned assigner: a TAL teacher, its cache (= the online teacher, entry by
entry and for 20 iterations of student losses), cross-assigner LAD, the ATSS warm-up."""
import json
import shutil

import numpy as np
import pytest
import torch
import zarr

from lad_cli.assign.atss import atss_assign
from lad_cli.assign.registry import ASSIGNERS
from lad_cli.assign.tal import tal_assign
from lad_cli.distill.cache.store import PAD, AssignmentCache, anchor_counts
from lad_cli.distill.sources import OwnAssignment, WarmedUp
from lad_cli.model.anchors import AnchorLayout
from lad_cli.model.build import load_checkpoint
from lad_cli.structures import Predictions
from tests.conftest import TINY, invoke
from tests.test_assign import random_batch
from tests.test_lad import assert_cache_is_online, assert_cached_student_is_online, info, trained_on


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
    assert_cached_student_is_online(tal_cache, tal_teacher, synth_data, tmp_path, "--alignment-from", "student",
                                    "--atss-epochs", "0")
    config = json.loads((tmp_path / "cached" / "config.json").read_text())
    assert config["assigner"] == "tal" and config["atss_epochs"] == 0  # followed the cache; no warm-up, as asked
    assert trained_on(tmp_path / "cached" / "last.pt")["class_target"] == "student's own alignment"


def test_a_tal_lad_student_starts_on_atss_by_default(tal_cache, synth_data, tmp_path):
    result = invoke("student-train", "--cache", tal_cache, "--data", synth_data, "--epochs", "3", "--val-split", "",
                    "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    trained = trained_on(tmp_path / "run" / "last.pt")
    assert trained["atss_warmup_epochs"] == 1 and trained["class_target"] == "teacher's alignment"


def test_cached_tal_student_trains_on_the_teachers_stored_alignment(tal_cache, tal_teacher, synth_data, tmp_path):
    """By default a cached TAL student's class target is the alignment the teacher stored; its
    losses are the online teacher-target student's to within the 1/255 quantisation, and not
    those of the student's own alignment."""
    assert info(tal_cache)["class_target"].startswith("the teacher's alignment (stored")
    common = ["--data", synth_data, "--epochs", "2", "--atss-epochs", "0", "--val-split", "", *TINY]
    runs = {"cached": ["--cache", tal_cache], "online": ["--teacher", tal_teacher],
            "own": ["--cache", tal_cache, "--alignment-from", "student"]}
    for name, given in runs.items():
        result = invoke("student-train", *given, "--out", tmp_path / name, *common)
        assert result.exit_code == 0, result.output
    read = lambda run: [json.loads(x)["loss_cls"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()[:5]]
    cached, online, own = read("cached"), read("online"), read("own")
    assert cached == pytest.approx(online, rel=2e-2) and cached[0] != online[0]  # quantised, not the float target
    assert all(abs(c - o) > 2e-2 * o for c, o in zip(cached, own))
    assert trained_on(tmp_path / "cached" / "last.pt")["class_target"] == "teacher's alignment"
    assert trained_on(tmp_path / "online" / "last.pt")["class_target"] == "teacher's alignment"


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
    (["--alignment-from", "teacher", "--assigner", "tal"], "--alignment-from teacher needs --teacher or --cache"),
    (["--cache", "TAL_CACHE", "--assigner", "atss"], "unknown --assigner 'atss': use paa, tal"),
])
def test_bad_tal_options(args, message, tal_cache, synth_data, tmp_path):
    args = [tal_cache if a == "TAL_CACHE" else a for a in args]
    result = invoke("student-train", "--data", synth_data, "--out", tmp_path / "r", *TINY, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_teachers_alignment_from_a_cache_without_it_is_refused(tal_teacher, synth_data, tmp_path):
    paa = tmp_path / "paa.zarr"  # a TAL teacher assigning by PAA: one-hot targets, no alignment stored
    assert invoke("assign", "--teacher", tal_teacher, "--data", synth_data, "--cache", paa, "--assigner", "paa",
                  "--device", "cpu").exit_code == 0
    common = ["student-train", "--cache", paa, "--assigner", "tal", "--cross-assigner", "--data", synth_data,
              "--epochs", "1", "--val-split", "", *TINY]
    refused = invoke(*common, "--alignment-from", "teacher", "--out", tmp_path / "refused")
    assert refused.exit_code == 2 and "its teacher assigned by paa, with one-hot targets" in refused.stderr
    assert not (tmp_path / "refused").exists()
    own = invoke(*common, "--out", tmp_path / "own")
    assert own.exit_code == 0 and "holds no teacher's alignment" not in own.output, own.output
    assert trained_on(tmp_path / "own" / "last.pt")["class_target"] == "student's own alignment"


def test_cross_assigner_needs_a_teacher_or_cache(synth_data, tmp_path):
    result = invoke("student-train", "--cross-assigner", "--data", synth_data, "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 2 and "--cross-assigner needs --cache or --teacher" in result.stderr


def test_online_student_with_the_teachers_alignment(tal_teacher, synth_data, tmp_path):
    common = ["student-train", "--teacher", tal_teacher, "--data", synth_data, "--epochs", "1", "--val-split", "", *TINY]
    runs = {"own": ["--alignment-from", "student"], "theirs": ["--alignment-from", "teacher"], "default": []}
    for name, given in runs.items():
        result = invoke(*common, *given, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    first = {r: json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[0]) for r in runs}
    assert first["own"]["loss_cls"] != first["theirs"]["loss_cls"]  # same positives, other class targets
    assert first["default"]["loss_cls"] == first["theirs"]["loss_cls"]  # the teacher's, by default


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


def format_1_copy(store_path, where):
    """The store as lad wrote it before format 2: the same assignments, no alignment."""
    store = AssignmentCache.open(store_path)
    counts = anchor_counts(store.padded_hw(), AnchorLayout.from_dict(store.provenance.anchor_layout))
    AssignmentCache.create(where, store.provenance, store.image_ids().tolist(), store.padded_hw(), store.max_anchors,
                           store.shard_entries)
    old = AssignmentCache.open(where, mode="r+")
    for shard in range(store.num_shards):
        r = store.shard_range(shard)
        rows = np.full((len(r), store.max_anchors), PAD, np.int16)
        for e in r:
            rows[e - r.start, :counts[e]] = store.read(e, int(counts[e]))
        old.write_shard(shard, rows, counts[r.start:r.stop], store.padded_hw()[r.start:r.stop])
    old.group.attrs["format_version"] = 1
    return where


def test_a_format_1_tal_store_still_trains_on_the_students_own_alignment(tal_cache, synth_data, tmp_path):
    old = format_1_copy(tal_cache, tmp_path / "old.zarr")
    described = info(old)
    assert described["format_version"] == 1 and described["class_target"].startswith("the student's own alignment")
    assert invoke("cache", "verify", old, "--data", synth_data).exit_code == 0
    common = ["student-train", "--cache", old, "--data", synth_data, "--epochs", "1", "--val-split", "", *TINY]
    result = invoke(*common, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "holds no teacher's alignment (cache format 1)" in result.output
    assert trained_on(tmp_path / "run" / "last.pt")["class_target"] == "student's own alignment"
    refused = invoke(*common, "--alignment-from", "teacher", "--out", tmp_path / "refused")
    assert refused.exit_code == 2 and "remake it with lad assign --overwrite" in refused.stderr


def test_a_changed_alignment_value_is_a_corrupt_entry(tal_cache, synth_data, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tal_cache, copy)
    store = AssignmentCache.open(copy)
    counts = anchor_counts(store.padded_hw(), AnchorLayout.from_dict(store.provenance.anchor_layout))
    matched, alignment = store.read_entry(0, int(counts[0]))
    anchor = int(np.flatnonzero(matched >= 0)[0])
    array = zarr.open_array(str(copy / "matched"), mode="r+")
    row = array[0]
    row[store.max_anchors + anchor] = (row[store.max_anchors + anchor] + 1) % 256  # the assignment untouched
    array[0] = row
    result = invoke("cache", "verify", copy, "--data", synth_data)
    assert result.exit_code == 2 and "is corrupt (checksum mismatch)" in result.stderr
    assert AssignmentCache.open(copy).read(1, int(counts[1])).shape == (counts[1],)  # other entries read


def test_one_hot_epochs_train_the_teachers_positives_with_paas_loss_first(tal_cache, synth_data, tmp_path):
    """--one-hot-epochs 1: the first epoch is PAA's head loss on the TAL teacher's assignment
    (as a PAA student of that cache), the next the TAL loss on the teacher's alignment."""
    common = ["student-train", "--cache", tal_cache, "--data", synth_data, "--epochs", "2", "--val-split", "", *TINY]
    runs = {"warm": ["--one-hot-epochs", "1"], "paa": ["--assigner", "paa", "--cross-assigner"], "tal": []}
    for name, given in runs.items():
        result = invoke(*common, *given, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    losses = {r: [json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines() if "loss" in x]
              for r in runs}
    first = len(losses["warm"]) // 2  # iterations of epoch 1
    assert losses["warm"][:first] == pytest.approx(losses["paa"][:first], abs=1e-5)
    assert losses["warm"][first] != pytest.approx(losses["paa"][first], abs=1e-3)
    assert losses["warm"][0] != pytest.approx(losses["tal"][0], abs=1e-3)
    assert trained_on(tmp_path / "warm" / "last.pt")["one_hot_epochs"] == 1


@pytest.mark.parametrize("args, message", [
    (["--one-hot-epochs", "2"], "--one-hot-epochs needs --cache or --teacher"),
    (["--one-hot-epochs", "2", "--atss-epochs", "1", "--cache", "TAL_CACHE"], "exclude each other: give one warm-up"),
])
def test_bad_warm_up_options(args, message, tal_cache, synth_data, tmp_path):
    args = [tal_cache if a == "TAL_CACHE" else a for a in args]
    result = invoke("student-train", "--data", synth_data, "--out", tmp_path / "r", *TINY, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output
