"""Faults: kills, corrupted stores, mismatched caches, full disks, non-finite losses, existing
output. Each test is one guarantee of docs/failures.md. The kill tests run the
CLI in real processes and SIGKILL them; the rest run in-process."""
import errno
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zarr

from lad_cli.assign import registry
from lad_cli.distill.cache.store import AssignmentCache
from lad_cli.engine import loop
from lad_cli.model.build import load_checkpoint
from tests.conftest import TINY, assign_args, error_line, invoke

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))



def assert_entry_10_named_corrupt(store, data, out, image_id) -> None:
    """`cache verify` names entry 10 (image 5, orig) as corrupt, and a student stops on image 5
    in whichever of its two views it reads first."""
    line = error_line(invoke("cache", "verify", store, "--data", data))
    assert line.startswith(f"error: {store}: entry 10 (image id {image_id}, view orig) is corrupt"), line
    result = invoke("student-train", "--cache", store, "--data", data, "--out", out, "--epochs", "1", "--val-split", "",
                    *TINY)
    line = error_line(result)  # every image is read once per epoch, in one of its two views
    assert any(line.startswith(f"error: {store}: entry {e} (image id {image_id}, view {v}) is corrupt")
               for e, v in ((10, "orig"), (11, "flip"))), line


def info(path) -> dict:
    result = invoke("cache", "info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def tree_bytes(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cache(reference_store):
    """The uninterrupted store every interrupted one must equal."""
    return reference_store


# --- 1. killed `lad assign` ------------------------------------------------------------------

# The CLI with each shard write (each checkpoint save) slowed down and reported on stdout once
# on disk, so that a test can kill the process at a chosen point of the run.
PACED_ASSIGN = """
import time
from lad_cli.distill.cache.store import AssignmentCache
from lad_cli.cli import main
write = AssignmentCache.write_shard
def paced(self, shard, *args):
    time.sleep(0.2)
    write(self, shard, *args)
    print(f"wrote shard {shard}", flush=True)
AssignmentCache.write_shard = paced
main()
"""

PACED_TRAIN = """
import os, time
from lad_cli.cli import main
from lad_cli.engine import loop
save = loop.save_atomic
def paced(obj, path):
    save(obj, path)
    print(f"saved {path.name} {obj['state']['iteration']} pid {os.getpid()}", flush=True)
    time.sleep(0.3)
loop.save_atomic = paced
main()
"""


def run_and_kill(script: str, args: list, marker: str, delay: float, log: Path) -> list[str]:
    """Run the CLI in a real process, SIGKILL it `delay` s after it printed a line starting
    with `marker`; its stdout lines."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=stderr)
        lines = []
        while not (lines and lines[-1].startswith(marker)):
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                pytest.fail(f"the process ended (code {proc.returncode}) before {marker!r}: {log.read_text()[-2000:]}")
            lines.append(line.strip())
        try:  # a run that ends before the kill is seen as such
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        lines += [line.strip() for line in proc.stdout.read().splitlines()]
    assert proc.returncode == -signal.SIGKILL, f"not killed: exit code {proc.returncode}"
    return lines


def test_killed_assign_resumes_to_the_same_store(teacher, cache, synth_data, tmp_path, monkeypatch):
    rng = random.Random(5)
    path = tmp_path / "killed.zarr"
    args = [*assign_args(teacher, synth_data, path), "--resume"]
    written, done = [], set()
    for attempt in range(3):
        lines = run_and_kill(PACED_ASSIGN, args, "wrote shard ", rng.uniform(0.0, 0.3), tmp_path / f"kill{attempt}.log")
        written += [int(line.split()[-1]) for line in lines if line.startswith("wrote shard ")]
        now = set(AssignmentCache.open(path).done().nonzero()[0].tolist())
        assert done <= now, "a finished entry was lost"
        done = now
    assert len(written) == len(set(written)), f"a finished shard was computed again: {written}"
    assert {2 * s for s in written} <= done and 0 < len(done) < 24

    # Until it finishes, a student refuses the cache, or trains on its finished images only.
    student = ["student-train", "--cache", path, "--data", synth_data, "--epochs", "1", "--val-split", "", *TINY]
    line = error_line(invoke(*student, "--out", tmp_path / "refused"))
    assert f"cache incomplete: {len(done)} of 24 entries (finish it with lad assign --resume" in line
    images_done = sorted({e // 2 for e in done if e ^ 1 in done})
    read = []
    real_read = AssignmentCache.read_entry
    monkeypatch.setattr(AssignmentCache, "read_entry", lambda self, e, n: read.append(e) or real_read(self, e, n))
    result = invoke(*student, "--allow-partial", "--out", tmp_path / "partial")
    assert result.exit_code == 0, result.output
    assert (f"--allow-partial: cache incomplete ({len(done)} of 24 entries): training on the {len(images_done)} of 12 "
            "images whose entries are all done") in " ".join(result.stderr.split())
    assert sorted(e // 2 for e in read) == images_done  # each finished image once, nothing else

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 24 - len(done)  # finished shards are skipped
    final, reference = info(path), info(cache)
    assert final["complete"] and final["digest"] == reference["digest"]
    assert final["files"] == reference["files"]  # no temp file of an interrupted write is left


# --- 2. killed training; 5. full disk during a save ------------------------------------------

@pytest.fixture(scope="module")
def reference_run(teacher_run):
    """An uninterrupted run of the training the kill tests interrupt: 2 epochs, TINY, no validation."""
    return teacher_run


def assert_same_training_state(run: Path, reference: Path) -> None:
    got, ref = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert got["state"]["iteration"] == ref["state"]["iteration"] == 6
    for name, tensor in ref["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    for index, buffers in ref["optimizer"]["state"].items():
        assert torch.equal(got["optimizer"]["state"][index]["momentum_buffer"], buffers["momentum_buffer"]), index


def test_killed_training_resumes_to_the_same_weights(synth_data, reference_run, tmp_path):
    run = tmp_path / "run"
    args = ["teacher-train", "--data", synth_data, "--out", run, "--epochs", "2", "--val-split", "", "--save-every", "1", *TINY]
    # 3 batches per epoch: killed after saving iteration 4, or while stepping or saving iteration 5
    run_and_kill(PACED_TRAIN, args, "saved last.pt 4", random.Random(7).uniform(0.0, 0.5), tmp_path / "kill.log")
    state = load_checkpoint(run / "last.pt")["state"]
    assert state["epoch"] == 1 and state["batch_in_epoch"] in (1, 2)
    result = invoke("teacher-train", "--out", run, "--resume", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_same_training_state(run, reference_run)
    assert not list(run.glob(".*.partial"))


class DiskFullAfter(io.RawIOBase):
    """A writer that passes `room` bytes to `file`, then fails as a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[:self.room]))
            self.room = 0
            raise ENOSPC
        self.room -= len(data)
        return self.file.write(data)


def test_full_disk_during_a_checkpoint_save_keeps_the_previous_one(synth_data, reference_run, tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def save_on_a_filling_disk(obj, f, *args, **kwargs):
        saves.append(obj["state"]["iteration"])
        room = 1 << 30 if len(saves) == 1 else 4096  # the second save runs out of space mid-file
        return real_save(obj, DiskFullAfter(f, room), *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save_on_a_filling_disk)
    args = ["teacher-train", "--data", synth_data, "--out", run, "--epochs", "2", "--val-split", "", "--save-every", "1", *TINY]
    line = error_line(invoke(*args))
    assert line == f"error: {run / 'last.pt'}: cannot write the checkpoint (No space left on device); the previous last.pt is kept"
    assert saves == [1, 2] and load_checkpoint(run / "last.pt")["state"]["iteration"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pt", "metrics.jsonl"]  # no temp file
    monkeypatch.setattr(torch, "save", real_save)
    result = invoke("teacher-train", "--out", run, "--resume", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_same_training_state(run, reference_run)


# --- 3. corrupted store ----------------------------------------------------------------------

def corrupt(store: Path, image: int, how: str) -> None:
    """Flip one byte in the middle of each chunk of the image's shard (one image per shard
    here), or cut the shard file in half."""
    shard = store / "matched" / "c" / str(image) / "0"
    data = bytearray(shard.read_bytes())
    if how == "truncate":
        shard.write_bytes(data[: len(data) // 2])
        return
    index = data[-(2 * 16 + 4):]  # zarr's shard index: (offset, nbytes) per chunk, then a crc32c
    for chunk in range(2):
        offset, nbytes = struct.unpack_from("<QQ", index, 16 * chunk)
        data[offset + nbytes // 2] ^= 0xFF
    shard.write_bytes(data)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupted_store_is_detected_naming_the_entry(cache, teacher, synth_data, tmp_path, how):
    store = tmp_path / "corrupt.zarr"
    shutil.copytree(cache, store)
    image_id = AssignmentCache.open(store).image_ids()[5]
    corrupt(store, 5, how)
    assert_entry_10_named_corrupt(store, synth_data, tmp_path / "student", image_id)
    # The repair docs/failures.md gives: drop the shard's rows, and --resume recomputes that shard only.
    (store / "entries" / "c" / "5" / "0").unlink()
    result = invoke(*assign_args(teacher, synth_data, store), "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 2 and info(store)["digest"] == info(cache)["digest"]


# --- 4. mismatched cache ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_teacher(teacher, tmp_path_factory):
    ckpt = torch.load(teacher, weights_only=False)
    first = next(iter(ckpt["model"]))
    ckpt["model"][first] = ckpt["model"][first] + 1e-3
    path = tmp_path_factory.mktemp("faults") / "other_teacher.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("change, message", [
    ("teacher", "cannot resume, the cache was made with another teacher_sha256"),
    ("annotations", "cannot resume, the cache was made with another annotations_sha256"),
    ("views", "cannot resume, the cache was made with another views"),
    ("anchors", "cache does not match the training setup: anchor_layout differs"),
])
def test_cache_of_another_setup_is_refused_naming_the_field(cache, teacher, other_teacher, synth_data, tmp_path,
                                                          change, message):
    before = tree_bytes(cache)
    args = assign_args(teacher, synth_data, cache) + ["--resume"]
    if change == "teacher":
        args[2] = other_teacher
    elif change == "annotations":
        args += ["--split", "val"]
    elif change == "views":
        args += ["--views", "orig"]
    else:
        args = ["student-train", "--cache", cache, "--data", synth_data, "--out", tmp_path / "s", "--anchor-scale", "4", *TINY]
    assert message in error_line(invoke(*args))
    assert tree_bytes(cache) == before


# --- 5. full disk, unwritable output ---------------------------------------------------------

@pytest.mark.parametrize("fail_at", ["creation", "second shard"])
def test_full_disk_during_assign_keeps_finished_shards(teacher, cache, synth_data, tmp_path, monkeypatch, fail_at):
    local = zarr.storage._local
    real_put = local._put

    def put_on_a_full_disk(path, value, *args, **kwargs):
        if fail_at == "creation" or "matched/c/1/" in str(path):
            raise ENOSPC
        return real_put(path, value, *args, **kwargs)

    store = tmp_path / "full.zarr"
    monkeypatch.setattr(local, "_put", put_on_a_full_disk)
    line = error_line(invoke(*assign_args(teacher, synth_data, store)))
    monkeypatch.setattr(local, "_put", real_put)
    if fail_at == "creation":
        assert line == f"error: {store}: cannot create the cache (No space left on device)"
        assert not any(tmp_path.iterdir())  # no half-made store, no staging folder
        return
    assert line == (f"error: {store}: cannot write shard 1 (No space left on device); the finished shards are kept, "
                    "lad assign --resume continues")
    assert info(store)["done"] == 2 and not list(store.rglob("*.partial"))
    result = invoke(*assign_args(teacher, synth_data, store), "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 22 and info(store)["digest"] == info(cache)["digest"]


def test_read_only_output_folder(teacher, synth_data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:
            (locked / "probe").write_bytes(b"")
            pytest.skip("this user writes into read-only folders (root); the ENOSPC tests cover the write paths")
        except PermissionError:
            pass
        line = error_line(invoke("teacher-train", "--data", synth_data, "--out", locked / "run", *TINY))
        assert line == f"error: {locked / 'run'}: cannot write the run folder (Permission denied)"
        line = error_line(invoke(*assign_args(teacher, synth_data, locked / "c.zarr")))
        assert line == f"error: {locked / 'c.zarr'}: cannot write the cache (Permission denied)"
    finally:
        locked.chmod(0o755)


# --- 6. non-finite loss ----------------------------------------------------------------------

@pytest.mark.parametrize("nan_at, skip, expected", [
    ({2}, 0, "iteration 2: non-finite loss_cls (nan); stopped, last good checkpoint: {last}"),
    ({2, 3}, 1, "iteration 3: non-finite loss_cls (nan), more than --skip-nonfinite 1; stopped, last good checkpoint: {last}"),
    ({2}, 1, None),
])
def test_non_finite_loss_stops_or_skips(synth_data, tmp_path, monkeypatch, nan_at, skip, expected):
    real_loss, real_save = registry.detection_loss, loop.save_atomic
    calls, saved = [], {}

    def loss_going_nan(*args, **kwargs):
        calls.append(1)
        losses = real_loss(*args, **kwargs)
        if len(calls) in nan_at:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    def recording_save(obj, path):
        saved[obj["state"]["iteration"]] = {k: v.clone() for k, v in obj["model"].items()}
        real_save(obj, path)

    monkeypatch.setattr(registry, "detection_loss", loss_going_nan)  # PAA's head loss, as the step calls it
    monkeypatch.setattr(loop, "save_atomic", recording_save)
    run = tmp_path / "run"
    result = invoke("teacher-train", "--data", synth_data, "--out", run, "--epochs", "1", "--val-split", "",
                    "--save-every", "1", "--skip-nonfinite", skip, *TINY)
    last = load_checkpoint(run / "last.pt")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    first_nan = min(nan_at)
    # the non-finite batch moved nothing: the weights saved after it are those from before it
    for k, v in saved[first_nan - 1].items():
        assert torch.equal(last["model"][k] if expected else saved[first_nan][k], v), k
    if expected:
        assert error_line(result) == "error: " + expected.format(last=run / "last.pt")
        assert last["state"]["iteration"] == max(nan_at) - 1 and max(saved) == max(nan_at) - 1
        return
    assert result.exit_code == 0, result.output
    assert "iteration 2: non-finite loss_cls (nan): batch skipped (1 of --skip-nonfinite 1)" in " ".join(result.stderr.split())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"iteration": 2, "epoch": 1, "skipped_nonfinite": "loss_cls"} in records
    assert [r["iteration"] for r in records if "loss" in r] == [1, 3]
    assert last["state"]["iteration"] == 3 and last["state"]["skipped_nonfinite"] == 1


# --- 7. existing output ----------------------------------------------------------------------

def test_existing_outputs_are_never_replaced_silently(teacher, cache, synth_data, tmp_path):
    run = teacher.parent
    for target, args in ((run, ["teacher-train", "--data", synth_data, "--out", run, *TINY]),
                         (cache, assign_args(teacher, synth_data, cache))):
        before = tree_bytes(target)
        line = error_line(invoke(*args))
        assert "already there; pass --resume" in line and "or --overwrite to replace it" in line
        assert tree_bytes(target) == before
    before = tree_bytes(synth_data)
    line = error_line(invoke("data", "synth", synth_data, "--train", "2", "--val", "1"))
    assert line == f"error: {synth_data}: a dataset is already there; pass --overwrite to replace it"
    assert tree_bytes(synth_data) == before
    line = error_line(invoke("teacher-train", "--data", synth_data, "--out", run, "--resume", "--overwrite"))
    assert line == "error: --resume and --overwrite exclude each other"


def test_a_start_that_failed_does_not_block_the_corrected_command(synth_data, tmp_path):
    run = tmp_path / "run"
    args = ["teacher-train", "--data", synth_data, "--out", run, "--epochs", "1", "--val-split", "", *TINY]
    assert "unknown view 'mirror'" in error_line(invoke(*args, "--views", "orig,mirror"))
    result = invoke(*args, "--views", "orig")  # the failed start left only its config.json
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["views"] == "orig"
