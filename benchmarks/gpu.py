"""The GPU benchmarks in one command (at most 8 minutes on one GPU), one JSON object:

    python -m benchmarks.gpu [--device cuda] [--quick]

- `assign_speed`: batched PAA assignment on the device vs the per-GT reference loop (CPU),
  COCO size (1333x800, 16 images x 30 GTs), and the peak device memory of the assignment;
- `train_step`: our PAA vs torchvision's RetinaNet, ResNet-50, 800x1333, batch 8, bf16;
- `student_step`: a ResNet-18 student's step by source (own, online ResNet-50 teacher,
  cache, co-learning) at 800/1333, batch 8, with the host syncs per step;
- `assign`: `lad assign --cache` images/s with a ResNet-50 teacher on COCO-sized inputs;
- `torchrun`: one `torchrun --nproc-per-node 1` cached student-train on nccl (gloo on the
  CPU): DDP, synchronised BatchNorm and channels-last as N processes run them.
Peak memory is reported where the device is CUDA. `--quick` shrinks every part to seconds
on the CPU (the test suite runs it, so that this command cannot rot).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import assign_speed, student_step, train_step
from benchmarks.train_step import peak_gb, reset_peak
from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.synth import write_synth
from lad_cli.distill.cache.build import run_assign
from lad_cli.distill.config import AssignConfig
from lad_cli.engine.checkpoint import model_checkpoint, save_atomic
from lad_cli.engine.config import TrainConfig
from lad_cli.model.build import new_detector

FULL = {"assign_images": 16, "assign_gts": 30, "assign_hw": (800, 1333), "train_arch": "resnet50", "train_hw": (800, 1333),
        "train_batch": 8, "train_iters": 10, "student_iters": 20, "student_batch": 8, "size": 800, "max_size": 1333,
        "width": 256, "head_depth": 4, "teacher_arch": "resnet50", "pass_images": 64, "torchrun_images": 32}
QUICK = {"assign_images": 2, "assign_gts": 4, "assign_hw": (160, 213), "train_arch": "resnet18", "train_hw": (128, 128),
         "train_batch": 2, "train_iters": 1, "student_iters": 1, "student_batch": 2, "size": 64, "max_size": 96,
         "width": 16, "head_depth": 1, "teacher_arch": "resnet18", "pass_images": 4, "torchrun_images": 4}


def teacher_run(root: Path, s: dict, device: str) -> tuple[Path, Path]:
    """Embedded images seen at `size` (upscaled: COCO-sized inputs) and an untrained teacher
    checkpoint recording that size: (data, teacher.pt)."""
    data = root / "data"
    write_synth(data, max(s["pass_images"], s["torchrun_images"]), 1, seed=0)
    split = load_split(*locate_split(data, "train"))
    cfg = TrainConfig(out="", data=str(data), size=s["size"], max_size=s["max_size"], device=device)
    torch.manual_seed(0)
    net = new_detector(s["teacher_arch"], len(split.categories), s["width"], s["head_depth"], None)
    save_atomic(model_checkpoint(net, split, cfg), root / "teacher.pt")
    return data, root / "teacher.pt"


def assign_pass(data: Path, teacher: Path, root: Path, s: dict, device: str) -> dict:
    reset_peak(torch.device(device))
    summary = run_assign(AssignConfig(str(teacher), str(data), cache=str(root / "pass.zarr"), batch=8, device=device))
    return {"teacher": s["teacher_arch"], "entries": summary["entries"], "input_short_side": s["size"],
            "images_per_s": round(1 / summary["seconds_per_image"], 2), "peak_gb": peak_gb(torch.device(device))}


def torchrun_step(data: Path, teacher: Path, root: Path, s: dict, device: str) -> dict:
    """A cached student-train of one epoch under torchrun with one process: wall seconds per
    iteration, process start and the cache pass excluded."""
    run_assign(AssignConfig(str(teacher), str(data), cache=str(root / "cache.zarr"), batch=8, device=device))
    args = ["--standalone", "--nproc-per-node", "1", "-m", "lad_cli", "student-train", "--data", str(data), "--cache",
            str(root / "cache.zarr"), "--out", str(root / "run"), "--val-split", "", "--epochs", "1", "--batch",
            str(s["student_batch"]), "--arch", "resnet18", "--width", str(s["width"]), "--head-depth", str(s["head_depth"]),
            "--warmup", "1", "--log-every", "1", "--device", "cuda" if device.startswith("cuda") else device]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"ok": False, "stderr_tail": done.stderr[-2000:]}
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"ok": True, "backend": "nccl" if device.startswith("cuda") else "gloo", "iterations": records[-1]["iteration"],
            "wall_s": round(seconds, 1), "data_wait": records[-1]["data_wait"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="every part at a toy size (seconds on the CPU)")
    args = p.parse_args()
    s, device = (QUICK if args.quick else FULL), args.device
    started = time.perf_counter()
    result = {"device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
              "quick": args.quick}
    reset_peak(torch.device(device))
    result["assign_speed"] = {**assign_speed.compare(s["assign_images"], s["assign_gts"], 80, 0, device, s["assign_hw"]),
                              "peak_gb": peak_gb(torch.device(device))}
    result["train_step"] = train_step.run(s["train_arch"], s["train_hw"], s["train_batch"], 256, 80, s["train_iters"], device)
    result["student_step"] = student_step.run(s["student_iters"], s["student_batch"], s["size"], s["max_size"], s["width"],
                                              s["head_depth"], device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, teacher = teacher_run(root, s, device)
        result["assign"] = assign_pass(data, teacher, root, s, device)
        result["torchrun"] = torchrun_step(data, teacher, root, s, device)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
