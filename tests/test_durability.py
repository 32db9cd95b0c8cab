"""Writes that survive a power cut: after renaming a checkpoint, the metrics file or a new
store into place, the folder holding the new name is fsynced (a rename is atomic, not durable)."""
import os
import stat

import numpy as np
import pytest
import torch

from lad_cli.distill.cache.build import open_or_create
from lad_cli.distill.cache.store import AssignmentCache, Provenance
from lad_cli.engine.checkpoint import save_atomic
from lad_cli.engine.run_dir import MetricsLog, write_config
from lad_cli.outputs import CACHE, claim


@pytest.fixture
def syscalls(monkeypatch):
    """Every os.replace (its target) and every fsync of a folder (its inode), in order."""
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        events.append(("replace", os.path.abspath(dst)))

    def fsync(fd):
        real_fsync(fd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            events.append(("fsync folder", st.st_ino))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def assert_folder_fsynced_after_rename(events, target):
    renamed = events.index(("replace", os.path.abspath(target)))
    assert ("fsync folder", os.stat(os.path.dirname(os.path.abspath(target))).st_ino) in events[renamed + 1:], events


def test_checkpoint_save(tmp_path, syscalls):
    save_atomic({"w": torch.ones(3)}, tmp_path / "last.pt")
    assert_folder_fsynced_after_rename(syscalls, tmp_path / "last.pt")


def test_metrics_file_cut_back_on_resume_and_config(tmp_path, syscalls):
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iteration": 2}\n')
    MetricsLog(tmp_path / "metrics.jsonl", keep_lines=1).close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"iteration": 1}\n'
    assert_folder_fsynced_after_rename(syscalls, tmp_path / "metrics.jsonl")
    write_config(tmp_path, {"epochs": 1})
    assert_folder_fsynced_after_rename(syscalls, tmp_path / "config.json")


def test_new_store(tmp_path, syscalls):
    provenance = Provenance("t" * 64, "a" * 64, [{"name": "orig"}], {"strides": [8]}, {"topk": 9}, [{"id": 1, "name": "x"}])
    with claim(tmp_path / "c.zarr", CACHE, overwrite=False) as new:
        open_or_create(new, provenance, [1, 2], np.full((2, 2), 128), 10, 1, resume=False)
    assert_folder_fsynced_after_rename(syscalls, tmp_path / "c.zarr")
    assert AssignmentCache.open(tmp_path / "c.zarr").num_entries == 2
