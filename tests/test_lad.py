"""LAD end to end: assign --cache, cache info/verify, cached vs online equivalence, co-learning."""
import hashlib
import json

import pytest
import torch

from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.dataset import Collate, DetectionDataset
from lad_cli.data.sampler import ViewBatchSampler
from lad_cli.data.views import parse_views
from lad_cli.distill.cache.store import AssignmentCache, anchor_counts
from lad_cli.distill.teacher import Teacher
from lad_cli.model.build import load_checkpoint
from lad_cli.runtime import use_bf16
from tests.conftest import TINY, invoke


@pytest.fixture(scope="module")
def cache(synth_data, teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("lad") / "cache.zarr"
    result = invoke("assign", "--teacher", teacher, "--data", synth_data, "--cache", path, "--batch", "3",
                    "--device", "cpu", "--shard-entries", "8")
    assert result.exit_code == 0, result.output
    return path


def info(path):
    result = invoke("cache", "info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cache_info_and_verify(cache, synth_data):
    meta = info(cache)
    assert meta["entries"] == 24 and meta["done"] == 24 and meta["complete"] and meta["views"] == ["orig", "flip"]
    assert meta["files"] == 3 * 2 + 3 and len(meta["digest"]) == 64  # 3 shards x 2 arrays + 3 zarr.json
    result = invoke("cache", "verify", cache, "--data", synth_data)
    assert result.exit_code == 0 and "ok: 24 entries" in result.stdout
    # Another split's annotation file is not the data this cache was made for.
    result = invoke("cache", "verify", cache, "--data", synth_data, "--split", "val")
    assert result.exit_code == 2 and "annotations_sha256 differs" in result.stderr


def test_cache_holds_exactly_the_online_assignment(cache, teacher, synth_data):
    assert_cache_is_online(cache, teacher, synth_data)


def assert_cache_is_online(cache, teacher, synth_data):
    """Every (image, view) entry equals what the online teacher computes for that view,
    with the images batched differently (the training sampler's batches); a stored alignment
    is the online one to within its quantisation (half a step of 1/255)."""
    store = AssignmentCache.open(cache)
    split = load_split(*locate_split(synth_data, "train"))
    online = Teacher(teacher, torch.device("cpu"), use_bf16(torch.device("cpu")))  # as `lad assign` ran it
    views = parse_views("orig,flip", online.checkpoint["size"], online.checkpoint["max_size"])
    dataset = DetectionDataset(split, views, 128)
    counts = anchor_counts(store.padded_hw(), online.model.config.layout)
    sampler = ViewBatchSampler(dataset.shapes(), 4, seed=11)
    seen = 0
    for epoch in range(4):  # several epochs so that both views of most images come up
        for keys in sampler.plan(epoch):
            batch = Collate(128)([dataset[k] for k in keys])
            matched, pred = online.assign(batch)
            alignment = online.class_target(batch, matched, pred, online.assigner)
            assert store.has_alignment == (alignment is not None)
            for j, ((i, v), row) in enumerate(zip(keys, matched)):
                e = store.entry(i, v)
                stored, stored_alignment = store.read_entry(e, int(counts[e]))
                assert torch.equal(row, torch.from_numpy(stored)), f"entry {e}"
                if alignment is not None:
                    assert (torch.from_numpy(stored_alignment)[row < 0] == 0).all()
                    assert torch.allclose(torch.from_numpy(stored_alignment), alignment[j], atol=0.5 / 255 + 1e-6, rtol=0)
                seen += 1
    assert seen >= 24 and any(store.read(e, int(counts[e])).max() >= 0 for e in range(24))


def test_resume_after_interruption_gives_the_same_digest(cache, teacher, synth_data, tmp_path, monkeypatch):
    real_write = AssignmentCache.write_shard
    calls = {"n": 0}

    def dying_write(self, shard, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed before the second shard reached the disk
        return real_write(self, shard, *args)

    path = tmp_path / "partial.zarr"
    args = ["assign", "--teacher", teacher, "--data", synth_data, "--cache", path, "--batch", "3", "--device", "cpu",
            "--shard-entries", "8"]
    monkeypatch.setattr(AssignmentCache, "write_shard", dying_write)
    assert invoke(*args).exit_code != 0
    monkeypatch.setattr(AssignmentCache, "write_shard", real_write)
    assert info(path)["done"] == 8 and not info(path)["complete"]
    result = invoke(*args)  # without --resume: refused, nothing lost
    assert result.exit_code == 2 and "--resume" in result.stderr
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 16  # the finished shard was skipped
    assert info(path)["digest"] == info(cache)["digest"]


def test_student_from_cache_equals_online_student(cache, teacher, synth_data, tmp_path):
    assert_cached_student_is_online(cache, teacher, synth_data, tmp_path)


def assert_cached_student_is_online(cache, teacher, synth_data, tmp_path, *options):
    """Same seed, same batches: per-iteration losses of cached and online LAD agree."""
    common = ["--data", synth_data, "--epochs", "7", "--val-split", "", *TINY, *options]
    cached = invoke("student-train", "--cache", cache, "--out", tmp_path / "cached", *common)
    assert cached.exit_code == 0, cached.output
    online = invoke("student-train", "--teacher", teacher, "--out", tmp_path / "online", *common)
    assert online.exit_code == 0, online.output
    read = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    a, b = read("cached")[:20], read("online")[:20]
    assert len(a) == 20
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_cls", "loss_box", "loss_iou"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-5), (ra["iteration"], key)
    assert json.loads((tmp_path / "cached" / "config.json").read_text())["cache"] == str(cache)
    # Each checkpoint records where its assignments came from (lad info).
    teacher_sha256 = hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert {"source": "cache", "cache": str(cache), "digest": info(cache)["digest"], "views": ["orig", "flip"],
            "images": 12, "teacher_sha256": teacher_sha256}.items() <= trained_on(tmp_path / "cached" / "last.pt").items()
    online = trained_on(tmp_path / "online" / "best.pt")
    assert (online["source"], online["teacher_sha256"], online["assign_from"]) == ("teacher", teacher_sha256, "teacher")


def trained_on(checkpoint):
    result = invoke("info", checkpoint, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["training"]["assignment"]


@pytest.mark.parametrize("args, message", [
    (["--views", "orig"], "views"),
    (["--soft-label-weight", "2"], "--soft-label-weight needs --teacher"),
    (["--peer-arch", "resnet34"], "--peer-arch and --peer-init need --colearn"),
])
def test_student_refuses_bad_combinations(cache, synth_data, tmp_path, args, message):
    result = invoke("student-train", "--cache", cache, "--data", synth_data, "--out", tmp_path / "r", *TINY, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_student_refuses_a_cache_of_other_data(cache, synth_data, tmp_path):
    result = invoke("student-train", "--cache", cache, "--data", synth_data, "--split", "val", "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 2 and "annotations_sha256 differs" in result.stderr


def test_assign_statistics_without_cache(teacher, synth_data):
    result = invoke("assign", "--teacher", teacher, "--data", synth_data, "--device", "cpu", "--batch", "4")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["entries"] == 24 and stats["gts"] > 0 and stats["positives_per_gt"] > 0
    per_level = sum(stats["positives_per_level"].values())
    assert per_level > 0 and abs(per_level / stats["gts"] - stats["positives_per_gt"]) <= 0.005


def test_colearning_trains_two_networks(synth_data, tmp_path):
    out = tmp_path / "co"
    result = invoke("student-train", "--colearn", "--peer-arch", "resnet34", "--data", synth_data, "--out", out,
                    "--epochs", "1", *TINY)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / "peer_last.pt")["detector"]["arch"] == "resnet34"
    assert load_checkpoint(out / "last.pt")["detector"]["arch"] == "resnet18"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    shares = [r["student_teaches"] for r in records if "student_teaches" in r]
    assert shares and all(0 <= s <= 1 for s in shares)
    assert any(r.get("network") == "peer" and "AP" in r for r in records)
    assert trained_on(out / "last.pt") == {"source": "colearn", "switch": "gt-level", "peer_arch": "resnet34"}
    assert trained_on(out / "peer_last.pt") == {"source": "colearn", "switch": "gt-level", "peer_arch": "resnet18"}


def test_online_lad_with_soft_labels(teacher, synth_data, tmp_path):
    result = invoke("student-train", "--teacher", teacher, "--soft-label-weight", "2", "--data", synth_data,
                    "--out", tmp_path / "kd", "--epochs", "1", "--val-split", "", *TINY)
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_kd_cls", "loss_kd_iou", "loss_kd_box"} <= set(first) and first["loss_kd_cls"] > 0
    total = first["loss_cls"] + first["loss_box"] + first["loss_iou"] + first["loss_kd_cls"] + first["loss_kd_iou"] + first["loss_kd_box"]
    assert first["loss"] == pytest.approx(total, rel=1e-5)
