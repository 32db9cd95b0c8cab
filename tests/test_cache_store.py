"""The assignment cache and `lad assign` (issue 17): a resumed store keeps its shard size, a
missing shard file is seen alike by info, verify and resume, leftovers of interrupted writes
go, Ctrl-C says how to continue, the numerics are recorded, --assigner is a choice."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lad_cli.distill.cache.store import AssignmentCache
from lad_cli.errors import LadError
from tests.conftest import TINY, assign_args, error_line, invoke

ROOT = Path(__file__).resolve().parents[1]


def info(path) -> dict:
    result = invoke("cache", "info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stored_files(folder: Path) -> list:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def store(reference_store):
    """A complete store every test copies before changing it."""
    return reference_store


def copy_of(store: Path, tmp_path: Path) -> Path:
    shutil.copytree(store, tmp_path / "copy.zarr")
    return tmp_path / "copy.zarr"


def test_resume_with_another_shard_size_is_refused_naming_both(store, teacher, synth_data, tmp_path):
    path = copy_of(store, tmp_path)
    before = stored_files(path)
    args = assign_args(teacher, synth_data, path)
    args[-1] = "3"
    line = error_line(invoke(*args, "--resume"))
    assert line == (f"error: {path}: cannot resume with --shard-entries 3: the cache has 2 entries per shard "
                    "(resume with --shard-entries 2, or without the option)")
    assert stored_files(path) == before
    plain = ["assign", "--teacher", teacher, "--data", synth_data, "--cache", path, "--device", "cpu", "--amp", "off"]
    for extra in (["--shard-entries", "2"], []):  # the store's own size, or none: resumed as it is
        result = invoke(*plain, *extra, "--resume")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["computed"] == 0


def test_a_shard_size_larger_than_the_store_resumes(teacher, synth_data, tmp_path):
    """--shard-entries above the entry count makes one shard of every entry; the same option resumes."""
    args = ["assign", "--teacher", teacher, "--data", synth_data, "--cache", tmp_path / "one.zarr", "--device", "cpu",
            "--amp", "off", "--views", "orig", "--shard-entries", "100"]
    assert invoke(*args).exit_code == 0
    assert info(tmp_path / "one.zarr")["shard_entries"] == 12
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 0


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_shard_file_is_incomplete_for_info_verify_and_resume(store, teacher, synth_data, tmp_path, damage):
    path = copy_of(store, tmp_path)
    shard_file = path / "matched" / "c" / "3" / "0"  # entries 6 and 7
    if damage == "deleted":
        shard_file.unlink()
    else:
        shard_file.write_bytes(b"")
    line = error_line(invoke("cache", "verify", path, "--data", synth_data))
    assert line == f"error: {path}: cache incomplete: 22 of 24 entries (finish it with lad assign --resume)"
    meta = info(path)
    assert (meta["done"], meta["complete"], meta["missing_shards"]) == (22, False, [3])
    result = invoke(*assign_args(teacher, synth_data, path, "--resume"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 2
    meta, reference = info(path), info(store)
    assert meta["complete"] and meta["missing_shards"] == [] and meta["digest"] == reference["digest"]
    assert invoke("cache", "verify", path, "--data", synth_data).exit_code == 0


def test_resume_removes_leftovers_of_interrupted_writes_whatever_their_name(store, teacher, synth_data, tmp_path):
    """A kill during a zarr write leaves the temp file zarr wrote beside its key; resume
    removes any stored file in the arrays that is not one of their keys, not one naming."""
    path = copy_of(store, tmp_path)
    (path / "entries" / "c" / "3" / "0").unlink()  # shard 3 not done: recomputed
    leftovers = [path / "matched" / "c" / "3" / "0.0f3a9c.partial", path / "matched" / "c" / "3" / "0.tmp",
                 path / "entries" / "c" / "5" / "0~"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a write")
    result = invoke(*assign_args(teacher, synth_data, path, "--resume"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 2
    assert stored_files(path) == stored_files(store) and info(path)["digest"] == info(store)["digest"]


# The CLI with the teacher slowed down (0.5 s per image), so that a run of 24 entries lasts
# ten seconds after its first shard: a test interrupts it mid-run, as Ctrl-C would (at 0.1 s
# a loaded machine's poll of the store saw the first shard only once the run had ended).
SLOW_ASSIGN = """
import signal
import time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the test process ignores
from lad_cli.cli import main
from lad_cli.distill.teacher import Teacher
predict = Teacher.predict
def slow(self, images):
    time.sleep(0.5 * len(images))
    return predict(self, images)
Teacher.predict = slow
main()
"""


def shards_done(path: Path) -> int:
    """Entries done in the store being written at `path` (0 while it is not there yet)."""
    try:
        return int(AssignmentCache.open(path).done().sum())
    except LadError:
        return 0


def test_ctrl_c_during_assign_says_resume_continues(store, teacher, synth_data, tmp_path):
    path = tmp_path / "interrupted.zarr"
    args = assign_args(teacher, synth_data, path)
    args[args.index("--batch") + 1] = "1"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_ASSIGN, *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not shards_done(path):
            assert proc.poll() is None, f"ended before its first shard: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and out == ""
    assert err.strip().splitlines()[-1] == (f"interrupted: {path}: its finished shards are kept; the same lad assign "
                                            "command with --resume continues")
    done = shards_done(path)
    assert 0 < done < 24
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 24 - done and info(path)["digest"] == info(store)["digest"]


def test_info_shows_the_numerics_and_a_store_of_any_thread_count_reads(store, teacher, synth_data, tmp_path):
    expected = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": "float32"}
    meta = info(store)
    assert len(meta["numerics"]) == 1 and meta["numerics"][0].items() >= expected.items()
    assert meta["numerics"][0]["device_name"]
    text = invoke("cache", "info", store)
    assert text.exit_code == 0 and "numerics: [{'device': 'cpu'" in text.stdout

    # One thread: a store of its own, readable, recorded as such; resumed with two, both are listed.
    one = tmp_path / "one_thread.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke(*assign_args(teacher, synth_data, one))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert [n["threads"] for n in info(one)["numerics"]] == [1]
    assert invoke("cache", "verify", one, "--data", synth_data).exit_code == 0
    (one / "entries" / "c" / "0" / "0").unlink()
    torch.set_num_threads(2)
    try:
        assert invoke(*assign_args(teacher, synth_data, one, "--resume")).exit_code == 0
    finally:
        torch.set_num_threads(threads)
    assert [n["threads"] for n in info(one)["numerics"]] == [1, 2]
    # Not provenance: a student in this process (its own thread count) trains on it.
    result = invoke("student-train", "--cache", one, "--data", synth_data, "--out", tmp_path / "student",
                    "--epochs", "1", "--val-split", "", *TINY)
    assert result.exit_code == 0, result.output

    # A store written before the numerics were recorded reads, and says it does not know them.
    old = copy_of(store, tmp_path)
    meta_file = old / "zarr.json"
    group = json.loads(meta_file.read_text())
    del group["attributes"]["numerics"]
    meta_file.write_text(json.dumps(group))
    assert info(old)["numerics"] == "unknown"
    assert "numerics: unknown" in invoke("cache", "info", old).stdout
    assert invoke("cache", "verify", old, "--data", synth_data).exit_code == 0


def test_assigner_is_a_choice_checked_before_the_teacher_loads(synth_data, tmp_path):
    line = error_line(invoke("assign", "--teacher", tmp_path / "missing.pt", "--data", synth_data, "--assigner", "paaa"))
    assert line == "error: unknown --assigner 'paaa': use paa, tal; did you mean 'paa'?"
