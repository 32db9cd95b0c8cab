"""Time per training iteration of one student (ResNet-18) on the same batches, by where its
assignment comes from: its own PAA (baseline), an online ResNet-50 teacher, the cache, or
co-learning with a ResNet-18 peer; and the host syncs each step makes.

    python -m benchmarks.student_step [--iters 30] [--batch 4] [--size 160] [--device cpu] [--amp auto]

Each iteration is timed whole: loading the batch (and, for the cache, its assignments),
the forward passes, the assignment, the losses and the update. The modes take turns
iteration by iteration and see the same batches. The baseline's own assignment (the PAA
step the cache replaces) is timed apart, so that `cached_over_baseline_minus_assign`
says how close a cached step comes to the student's forward, backward and store read
alone (the limit: 1). Syncs: one more step per mode under `benchmarks.syncs.SyncCounter`
(the operations that wait for the device on CUDA). Prints one JSON object.
"""
import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.syncs import SyncCounter
from benchmarks.train_step import peak_gb, reset_peak
from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.dataset import DetectionDataset
from lad_cli.data.loader import make_loader
from lad_cli.data.sampler import ViewBatchSampler
from lad_cli.data.synth import write_synth
from lad_cli.data.views import parse_views
from lad_cli.distill.cache.build import run_assign
from lad_cli.distill.config import AssignConfig
from lad_cli.distill.sources import build_source
from lad_cli.engine.checkpoint import model_checkpoint, save_atomic
from lad_cli.engine.config import TrainConfig
from lad_cli.engine.step import train_step
from lad_cli.losses import LossWeights
from lad_cli.model.build import new_detector
from lad_cli.runtime import use_bf16


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Mode:
    """One mode's student, source, optimizer and batches; `step()` runs one whole iteration."""

    def __init__(self, cfg: TrainConfig, split, device: torch.device, bf16: bool):
        torch.manual_seed(cfg.seed)
        student = new_detector(cfg.arch, len(split.categories), cfg.width, cfg.head_depth, None)
        self.source = build_source(cfg, student, split, device, bf16)
        self.nets = {"student": student, **self.source.peers()}
        for net in self.nets.values():
            net.to(device).train()
        self.params = [p for net in self.nets.values() for p in net.parameters()]
        self.optimizer = torch.optim.SGD(self.params, lr=0.001, momentum=0.9)
        dataset = self.source.wrap_dataset(DetectionDataset(split, parse_views(cfg.views, cfg.size, cfg.max_size), 128))
        self.batches = iter(make_loader(dataset, ViewBatchSampler(dataset.shapes(), cfg.batch, cfg.seed), 128, 0, device))
        self.weights = LossWeights(box_weighting=self.source.box_weighting)
        self.device, self.bf16 = device, bf16
        self.assign_seconds = 0.0
        assign = self.source.assign

        def timed_assign(*args):
            synchronize(device)
            start = time.perf_counter()
            out = assign(*args)
            synchronize(device)
            self.assign_seconds += time.perf_counter() - start
            return out
        self.source.assign = timed_assign

    def step(self) -> float:
        """Seconds of one iteration (batch loading included)."""
        synchronize(self.device)
        start = time.perf_counter()
        batch = next(self.batches)
        train_step(self.nets, self.source, batch.to(self.device), self.optimizer, self.params, self.weights, 35.0, 0.001,
                   self.device, self.bf16)
        synchronize(self.device)
        return time.perf_counter() - start

    def syncs(self) -> int:
        with SyncCounter() as counter:
            self.step()
        return counter.total


def run(iters: int = 30, batch: int = 4, size: int = 160, max_size: int = 256, width: int = 64, head_depth: int = 2,
        device: str = "cpu", amp: str = "auto") -> dict:
    device = torch.device(device)
    bf16 = use_bf16(device, amp)
    warmup = 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synth(tmp / "data", batch * (iters + warmup + 1) * 2, 1, seed=0)
        split = load_split(*locate_split(tmp / "data", "train"))
        cfg = TrainConfig(out="", data=str(tmp / "data"), arch="resnet18", width=width, head_depth=head_depth, size=size,
                          max_size=max_size, batch=batch, device=str(device), amp=amp)
        teacher = new_detector("resnet50", len(split.categories), width, head_depth, None)
        save_atomic(model_checkpoint(teacher, split, cfg), tmp / "teacher.pt")
        run_assign(AssignConfig(str(tmp / "teacher.pt"), str(tmp / "data"), cache=str(tmp / "cache.zarr"),
                                batch=batch, device=str(device), amp=amp))
        modes = {"baseline": Mode(cfg, split, device, bf16),
                 "online": Mode(replace(cfg, teacher=str(tmp / "teacher.pt")), split, device, bf16),
                 "cached": Mode(replace(cfg, cache=str(tmp / "cache.zarr")), split, device, bf16),
                 "colearn": Mode(replace(cfg, colearn=True), split, device, bf16)}
        times = {name: [] for name in modes}
        peaks = {}
        for i in range(iters + warmup):  # the modes take turns, so that a drift of the machine hits all
            for name, mode in modes.items():
                reset_peak(device)
                seconds = mode.step()
                peaks[name] = peak_gb(device)
                if i >= warmup:
                    times[name].append(seconds)
                elif i == warmup - 1:
                    mode.assign_seconds = 0.0
        syncs = {name: mode.syncs() for name, mode in modes.items()}
    ms = {name: statistics.mean(t) * 1000 for name, t in times.items()}
    assign_ms = {name: modes[name].assign_seconds * 1000 / iters for name in ("baseline", "online", "colearn")}
    return {
        "device": str(device), "bf16": bf16, "batch": batch, "size": size, "max_size": max_size, "width": width,
        "student": "resnet18", "teacher": "resnet50", "peer": "resnet18", **{f"{name}_ms": round(v, 1) for name, v in ms.items()},
        **{f"{name}_assign_ms": round(v, 1) for name, v in assign_ms.items()},
        "cached_over_baseline": round(ms["cached"] / ms["baseline"], 3),
        "cached_over_baseline_minus_assign": round(ms["cached"] / (ms["baseline"] - assign_ms["baseline"]), 3),
        "cached_over_online": round(ms["cached"] / ms["online"], 3),
        "online_over_baseline": round(ms["online"] / ms["baseline"], 3),
        "syncs_per_step": syncs, **({"peak_gb": peaks} if device.type == "cuda" else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--max-size", type=int, default=256)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--head-depth", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto")
    a = p.parse_args()
    print(json.dumps(run(a.iters, a.batch, a.size, a.max_size, a.width, a.head_depth, a.device, a.amp)))


if __name__ == "__main__":
    main()
