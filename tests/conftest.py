import os
import warnings

import pytest
import torch

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
