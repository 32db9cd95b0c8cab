"""The output policy (`lad_cli.outputs`): no command destroys what it did not write.

--overwrite replaces only lad's own output of the kind asked for; an output that is, holds
or lies in an input is refused; a replacement is swapped in only once complete; two
processes writing one output: one wins, the other stops in one line and leaves nothing."""
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lad_cli import outputs
from lad_cli.errors import LadError
from tests.conftest import TINY, invoke

ROOT = Path(__file__).resolve().parents[1]


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return " ".join(lines[0].split())


def tree_bytes(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """What the policy may leave beside an output: its lock, staging and swap names."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") and
                  p.name.endswith((".lock", ".partial", ".replaced")))


def assign(teacher, data, cache, *extra):
    return invoke("assign", "--teacher", teacher, "--data", data, "--cache", cache, "--device", "cpu", *extra)


@pytest.fixture(scope="module")
def store(teacher, synth_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "c.zarr"
    result = assign(teacher, synth_data, path)
    assert result.exit_code == 0, result.output
    return path


def digest(path: Path) -> str:
    result = invoke("cache", "info", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["digest"]


# --- an output is never an input ------------------------------------------------------------

def test_the_issues_deleting_commands_are_refused_and_delete_nothing(teacher, synth_data, tmp_path, monkeypatch):
    before = tree_bytes(synth_data)
    line = error_line(assign(teacher, synth_data, synth_data, "--overwrite"))  # deleted the dataset before
    assert line == f"error: {synth_data}: is the input {synth_data}; write the output somewhere else"
    line = error_line(assign(teacher, synth_data, synth_data / "c.zarr"))
    assert "is inside the input" in line
    images = synth_data / "images" / "val"
    line = error_line(invoke("predict", images, "--checkpoint", teacher, "--out", images, "--overwrite"))
    assert line == f"error: {images}: is the input {images}; write the output somewhere else"
    monkeypatch.chdir(images)  # lad predict x.png --out . --overwrite
    line = error_line(invoke("predict", "000001.png", "--checkpoint", teacher, "--out", ".", "--overwrite"))
    assert line == "error: .: holds the input 000001.png; write the output somewhere else"
    assert tree_bytes(synth_data) == before


def test_a_run_is_not_written_into_its_teachers_run_or_dataset(teacher, synth_data, tmp_path):
    teacher_run = teacher.parent
    before = tree_bytes(teacher_run)
    args = ["student-train", "--teacher", teacher, "--data", synth_data, "--epochs", "1", "--val-split", "", *TINY]
    assert "is inside the input" in error_line(invoke(*args, "--out", teacher_run / "student"))
    assert "is the input" in error_line(invoke(*args, "--out", teacher_run, "--overwrite"))
    assert "holds the input" in error_line(invoke(*args, "--out", synth_data.parent, "--overwrite"))
    assert tree_bytes(teacher_run) == before
    line = error_line(invoke("export", "--checkpoint", teacher, "--out", teacher, "--overwrite"))
    assert line == f"error: {teacher}: is the input {teacher}; write the output somewhere else"
    assert tree_bytes(teacher_run) == before


# --- --overwrite replaces only lad's own output of that kind ---------------------------------

def foreign(path: Path, folder: bool = True) -> Path:
    if folder:
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    else:
        path.write_text("mine")
    return path


def test_overwrite_replaces_only_what_lad_wrote(teacher, synth_data, tmp_path):
    cases = {
        "run": (foreign(tmp_path / "run"), ["teacher-train", "--data", synth_data, "--out", tmp_path / "run",
                                            "--epochs", "1", "--val-split", "", *TINY]),
        "cache": (foreign(tmp_path / "c.zarr"), ["assign", "--teacher", teacher, "--data", synth_data, "--cache",
                                                 tmp_path / "c.zarr", "--device", "cpu"]),
        "predict": (foreign(tmp_path / "pred"), ["predict", synth_data / "images" / "val", "--checkpoint", teacher,
                                                 "--out", tmp_path / "pred"]),
        "export": (foreign(tmp_path / "model.onnx", folder=False), ["export", "--checkpoint", teacher, "--out",
                                                                     tmp_path / "model.onnx"]),
        "dataset": (foreign(tmp_path / "data"), ["data", "synth", tmp_path / "data", "--train", "2", "--val", "1"]),
        "a dataset's own folder": (synth_data / "images", ["data", "synth", synth_data / "images"]),
    }
    for name, (path, args) in cases.items():
        before = tree_bytes(path) if path.is_dir() else path.read_bytes()
        for flags in ([], ["--overwrite"]):
            line = error_line(invoke(*args, *flags))
            assert f"{path}: exists and is not a" in line and "lad wrote" in line, (name, line)
            assert "--overwrite" not in line, (name, line)  # never suggests the flag that would delete it
        assert (tree_bytes(path) if path.is_dir() else path.read_bytes()) == before, name
        assert leftovers(path.parent) == [], name


def test_overwrite_replaces_lads_own_outputs(teacher, synth_data, store, tmp_path):
    data = tmp_path / "data"
    assert invoke("data", "synth", data, "--train", "2", "--val", "1").exit_code == 0
    line = error_line(invoke("data", "synth", data, "--train", "2", "--val", "1"))
    assert line == f"error: {data}: a dataset is already there; pass --overwrite to replace it"
    result = invoke("data", "synth", data, "--train", "3", "--val", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(json.loads((data / "annotations" / "train.json").read_text())["images"]) == 3
    pred = tmp_path / "pred"
    args = ["predict", synth_data / "images" / "val", "--checkpoint", teacher, "--out", pred]
    assert invoke(*args).exit_code == 0
    (pred / "predictions.json").write_text('{"checkpoint": "x", "detections": []}')  # lad's, then edited
    assert invoke(*args, "--overwrite").exit_code == 0
    assert json.loads((pred / "predictions.json").read_text())["checkpoint"] == str(teacher)
    for name, path in (("data", data), ("pred", pred)):
        assert leftovers(path.parent) == [], name


# --- a replacement is swapped in only when complete ------------------------------------------

def test_a_failed_replacement_leaves_the_old_output_whole(teacher_run, teacher, synth_data, store, tmp_path, monkeypatch):
    before = tree_bytes(teacher_run)
    line = error_line(invoke("teacher-train", "--data", tmp_path / "missing", "--out", teacher_run, "--overwrite", *TINY))
    assert "data directory not found" in line
    assert tree_bytes(teacher_run) == before and leftovers(teacher_run.parent) == []

    old = digest(store)
    from lad_cli.distill.cache import store as store_module

    real_write = store_module.AssignmentCache.write_shard
    calls = []

    def disk_full_at_the_second_shard(self, shard, *args):
        calls.append(shard)
        if len(calls) == 2:
            raise LadError(f"{self.path}: cannot write shard {shard} (No space left on device)")
        real_write(self, shard, *args)

    args = ["--views", "orig,flip", "--shard-entries", "4", "--batch", "2"]
    other = tmp_path / "other.zarr"  # the same store made with other shards, to replace `store` with
    assert assign(teacher, synth_data, other, *args).exit_code == 0
    monkeypatch.setattr(store_module.AssignmentCache, "write_shard", disk_full_at_the_second_shard)
    assert "No space left" in error_line(assign(teacher, synth_data, store, *args, "--overwrite"))
    assert digest(store) == old  # the old store is whole, the finished shards wait beside it
    assert (store.parent / f".{store.name}.partial" / "zarr.json").is_file()
    monkeypatch.setattr(store_module.AssignmentCache, "write_shard", real_write)
    result = assign(teacher, synth_data, store, *args, "--resume")  # finishes the replacement
    assert result.exit_code == 0, result.output
    assert digest(store) == digest(other) and leftovers(store.parent) == []
    assert json.loads((store / "zarr.json").read_text())["attributes"]["shard_entries"] == 4


def test_a_stopped_run_replacement_keeps_the_old_run_and_resumes(teacher_run, synth_data, tmp_path, monkeypatch):
    """teacher-train --overwrite stopped after its first save (a NaN loss): the old run is
    whole; --resume continues the replacement beside it and swaps it in when it ends."""
    from lad_cli.assign import registry

    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    before = tree_bytes(run)
    real_loss, calls = registry.detection_loss, []

    def nan_at_the_second_step(*args, **kwargs):
        calls.append(1)
        losses = real_loss(*args, **kwargs)
        if len(calls) == 2:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    monkeypatch.setattr(registry, "detection_loss", nan_at_the_second_step)
    args = ["teacher-train", "--data", synth_data, "--out", run, "--epochs", "1", "--val-split", "", "--save-every", "1",
            "--seed", "7", *TINY]
    assert "non-finite loss_cls" in error_line(invoke(*args, "--overwrite"))
    assert tree_bytes(run) == before  # the old run, whole
    assert (outputs.beside(run, "partial") / "last.pt").is_file()  # the replacement's progress, kept
    monkeypatch.setattr(registry, "detection_loss", real_loss)
    result = invoke("teacher-train", "--out", run, "--resume", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["seed"] == 7 and leftovers(tmp_path) == []


def test_an_interrupted_swap_is_undone(tmp_path):
    target = tmp_path / "out"
    old = outputs.beside(target, "replaced")  # a crash between commit's two renames
    old.mkdir()
    (old / "predictions.json").write_text('{"checkpoint": "c", "detections": []}')
    with pytest.raises(LadError, match="a predict folder is already there"):  # restored, so kept
        outputs.claim(target, outputs.PREDICTIONS, overwrite=False)
    assert (target / "predictions.json").is_file() and leftovers(tmp_path) == []


# --- one writer at a time ---------------------------------------------------------------------

def _claim_and_hold(target: str, start, done, results) -> None:
    start.wait()
    try:
        with outputs.claim(Path(target), outputs.PREDICTIONS, overwrite=True):
            done.wait()
            results.put("won")
    except LadError as exc:
        done.wait()
        results.put(str(exc))


def test_two_processes_claiming_one_output_one_wins(tmp_path):
    context = multiprocessing.get_context("fork")  # the child runs only lad_cli.outputs: no torch
    for attempt in range(20):
        target = tmp_path / f"out{attempt}"
        start, done, results = context.Barrier(2), context.Barrier(2), context.Queue()
        procs = [context.Process(target=_claim_and_hold, args=(str(target), start, done, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = sorted(results.get(timeout=5) for _ in procs)
        assert got[1] == "won" and "another lad process is writing this predict folder now" in got[0], got
        assert leftovers(tmp_path) == [] and not target.exists()


def test_two_assigns_replacing_one_store_at_once(teacher, synth_data, store, tmp_path):
    """The issue's race: one wins, the other exits 2 in one line; the store stays complete."""
    expected = digest(store)
    path = tmp_path / "race.zarr"
    assert assign(teacher, synth_data, path).exit_code == 0
    cmd = [sys.executable, "-m", "lad_cli", "assign", "--teacher", str(teacher), "--data", str(synth_data), "--cache",
           str(path), "--device", "cpu", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        ends = [(p.wait(180), p.stderr.read()) for p in procs]
        for code, err in ends:
            assert code in (0, 2) and "Traceback" not in err, err
            if code == 2:
                lines = [line for line in err.splitlines() if line.strip()]
                assert len(lines) == 1 and "another lad process is writing this cache now" in lines[0], err
        assert 0 in [code for code, _ in ends]
        assert digest(path) == expected and leftovers(tmp_path) == []


# --- files get the usual mode ----------------------------------------------------------------

def test_written_files_follow_the_umask(teacher, synth_data, tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert invoke("teacher-train", "--data", synth_data, "--out", run, "--epochs", "1", "--val-split", "",
                      *TINY).exit_code == 0
        assert invoke("export", "--checkpoint", run / "last.pt", "--out", tmp_path / "m.pt", "--format",
                      "torchscript").exit_code == 0
        for path in (run / "last.pt", run / "config.json", tmp_path / "m.pt"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # mkstemp gave 0600 before
    finally:
        os.umask(old)
