"""torchrun: 2 gloo processes on the CPU give what one process gives with the same global batch."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lad_cli.cli import app
from lad_cli.data.sampler import ViewBatchSampler
from lad_cli.model.anchors import AnchorLayout
from lad_cli.model.detector import DetectorConfig, PAADetector
from tests.conftest import TINY
from tests.test_faults import (
    PACED_TRAIN,  # announces each save with its pid, then pauses
)

runner = CliRunner()
EXACT = [*TINY, "--amp", "off"]  # float32, so that 1 and 2 processes agree to rounding


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def torchrun(*args, nproc=2):
    """`torchrun --standalone --nproc-per-node N -m lad_cli ARGS`, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lad_cli", *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(run):
    return torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4, msg=k)  # float noise, grown over steps


def records(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("data_wait", "eval_seconds")} for r in lines]


def assert_same_records(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == (y[k] if y[k] is None else pytest.approx(y[k], rel=1e-4, abs=1e-6)), k


@pytest.fixture(scope="module")
def teacher(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "teacher"
    invoke("teacher-train", "--data", synth_data, "--out", out, "--epochs", "1", "--val-split", "", *EXACT)
    return out / "last.pt"


TEACHER_TRAIN = ["teacher-train", "--epochs", "2", *EXACT]


@pytest.fixture(scope="module")
def one_process_run(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "one"
    invoke(*TEACHER_TRAIN, "--data", synth_data, "--out", out)
    return out


def test_teacher_train_two_processes_equal_one(synth_data, one_process_run, tmp_path):
    """Own assignments, BatchNorm trained from scratch (synchronised), sharded validation."""
    torchrun(*TEACHER_TRAIN, "--data", synth_data, "--out", tmp_path / "two")
    assert_same_weights(weights(one_process_run), weights(tmp_path / "two"))
    assert_same_records(records(one_process_run), records(tmp_path / "two"))  # losses, and val AP on rank 0
    # A 2-process run resumes under 2 processes only.
    result = runner.invoke(app, ["teacher-train", "--out", str(tmp_path / "two"), "--resume", "--device", "cpu"])
    assert result.exit_code == 2 and "used 2 processes; resume it with as many (this is 1)" in result.stderr


def test_killed_rank_resumes_to_the_same_weights(synth_data, one_process_run, tmp_path):
    script = tmp_path / "paced_lad.py"
    script.write_text(PACED_TRAIN)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           *map(str, [*TEACHER_TRAIN, "--data", synth_data, "--out", run, "--save-every", "1"])]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    for line in proc.stdout:  # 3 batches per epoch: rank 0 dies in epoch 2, after saving iteration 4
        if line.startswith("saved last.pt 4 "):
            time.sleep(random.Random(3).uniform(0.0, 0.5))
            os.kill(int(line.split()[-1]), signal.SIGKILL)
            break
    assert proc.wait(timeout=120) != 0  # torchrun stops the other rank and fails
    assert torch.load(run / "last.pt", weights_only=False)["state"]["iteration"] in (4, 5)
    torchrun("teacher-train", "--out", run, "--resume", "--device", "cpu")
    assert_same_weights(weights(one_process_run), weights(run))
    assert_same_records(records(one_process_run), records(run))


def test_assign_and_cached_student_two_processes_equal_one(synth_data, teacher, tmp_path):
    assign = ["assign", "--teacher", teacher, "--data", synth_data, "--device", "cpu", "--amp", "off",
              "--shard-entries", "4", "--batch", "3"]
    invoke(*assign, "--cache", tmp_path / "one.zarr")
    done = torchrun(*assign, "--cache", tmp_path / "two.zarr")
    summary = json.loads(done.stdout)  # rank 0 alone reports
    assert summary["processes"] == 2 and summary["computed"] == 24 and summary["done"] == 24
    digests = [json.loads(invoke("cache", "info", tmp_path / f"{n}.zarr", "--json").stdout)["digest"] for n in ("one", "two")]
    assert digests[0] == digests[1]

    student = ["student-train", "--data", synth_data, "--cache", tmp_path / "one.zarr", "--epochs", "1", *EXACT]
    invoke(*student, "--out", tmp_path / "s1")
    torchrun(*student, "--out", tmp_path / "s2")
    assert_same_weights(weights(tmp_path / "s1"), weights(tmp_path / "s2"))
    assert_same_records(records(tmp_path / "s1"), records(tmp_path / "s2"))


def test_sharded_tal_assign_gives_the_same_digest(synth_data, tmp_path):
    invoke("teacher-train", "--assigner", "tal", "--data", synth_data, "--out", tmp_path / "t", "--epochs", "1",
           "--atss-epochs", "0", "--val-split", "", *EXACT)
    assign = ["assign", "--teacher", tmp_path / "t" / "last.pt", "--data", synth_data, "--device", "cpu", "--amp", "off",
              "--shard-entries", "4", "--batch", "3"]
    invoke(*assign, "--cache", tmp_path / "one.zarr")
    torchrun(*assign, "--cache", tmp_path / "two.zarr")
    meta = [json.loads(invoke("cache", "info", tmp_path / f"{n}.zarr", "--json").stdout) for n in ("one", "two")]
    assert meta[0]["assigner"]["name"] == "tal" and meta[0]["digest"] == meta[1]["digest"]


def test_sampler_shares_cover_each_batch_once():
    shapes = [[(128, 128)] if i < 10 else [(256, 128)] for i in range(15)]  # batches of 4: 4, 4, 2 and 4, 1
    one = ViewBatchSampler(shapes, 4, seed=5)
    shares = [ViewBatchSampler(shapes, 4, seed=5, rank=r, world=3) for r in range(3)]
    for epoch in range(3):
        plan = one.plan(epoch)
        kept = [b for b in plan if len(b) >= 3]
        assert len(kept) < len(plan)  # this plan has batches too small to share
        per_rank = [s.local_plan(epoch) for s in shares]
        assert all(len(p) == len(kept) for p in per_rank)
        for j, batch in enumerate(kept):
            assert sum((p[j] for p in per_rank), []) == batch and all(p[j] for p in per_rank)
    shares[1].set_epoch(2, start=1)
    assert list(shares[1]) == shares[1].local_plan(2)[1:]


def test_channels_last_gives_the_same_predictions():
    """The CUDA path runs the detector channels-last; the same code on the CPU must agree."""
    torch.manual_seed(0)
    net = PAADetector(DetectorConfig("resnet18", 3, 16, 1, AnchorLayout(octave_base_scale=4))).eval()
    images = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        ref = net(images)
        net = net.to(memory_format=torch.channels_last)
        got = net(images.contiguous(memory_format=torch.channels_last))
    for name in ("cls_logits", "box_deltas", "iou_logits"):
        np.testing.assert_allclose(getattr(got, name).numpy(), getattr(ref, name).numpy(), atol=1e-4)
