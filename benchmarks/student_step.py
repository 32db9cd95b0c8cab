"""Time per training iteration of one student (ResNet-18) on the same batches, by where its
assignment comes from: its own PAA (baseline), an online ResNet-50 teacher, or the cache.

    python -m benchmarks.student_step [--iters 30] [--batch 4] [--size 160] [--device cpu]

Each iteration is timed whole: loading the batch (and, for the cache, its assignments),
the forward passes, the assignment, the losses and the update. The three modes take turns
iteration by iteration and see the same batches. Prints one JSON object.
"""
import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

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


def make_step(cfg: TrainConfig, split, device, bf16: bool):
    """A closure running one whole iteration (batch loading included) of the mode `cfg` names."""
    torch.manual_seed(cfg.seed)
    student = new_detector(cfg.arch, len(split.categories), cfg.width, cfg.head_depth, None)
    source = build_source(cfg, student, split, device, bf16)
    nets = {"student": student, **source.peers()}
    for net in nets.values():
        net.to(device).train()
    params = [p for net in nets.values() for p in net.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    dataset = DetectionDataset(split, parse_views(cfg.views, cfg.size, cfg.max_size), 128)
    dataset = source.wrap_dataset(dataset)
    sampler = ViewBatchSampler(dataset.shapes(), cfg.batch, cfg.seed)
    loader = make_loader(dataset, sampler, 128, 0, device)
    weights = LossWeights(box_weighting=source.box_weighting)
    batches = iter(loader)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        batch = next(batches)
        train_step(nets, source, batch.to(device), optimizer, params, weights, 35.0, 0.001, device, bf16)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--max-size", type=int, default=256)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto")
    args = p.parse_args()
    device = torch.device(args.device)
    bf16 = use_bf16(device, args.amp)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = args.batch * (args.iters + 2) * 2
        write_synth(tmp / "data", images, 1, seed=0)
        split = load_split(*locate_split(tmp / "data", "train"))
        cfg = TrainConfig(out="", data=str(tmp / "data"), arch="resnet18", width=args.width, head_depth=2, size=args.size,
                          max_size=args.max_size, batch=args.batch, device=args.device, amp=args.amp)
        teacher = new_detector("resnet50", len(split.categories), args.width, 2, None)
        save_atomic(model_checkpoint(teacher, split, cfg), tmp / "teacher.pt")
        run_assign(AssignConfig(str(tmp / "teacher.pt"), str(tmp / "data"), cache=str(tmp / "cache.zarr"),
                                batch=args.batch, device=args.device, amp=args.amp))
        steps = {"baseline": make_step(cfg, split, device, bf16),
                 "online": make_step(replace(cfg, teacher=str(tmp / "teacher.pt")), split, device, bf16),
                 "cached": make_step(replace(cfg, cache=str(tmp / "cache.zarr")), split, device, bf16)}
        times = {name: [] for name in steps}
        for i in range(args.iters + 2):  # the modes take turns, so that a drift of the machine hits all three
            for name, step in steps.items():
                seconds = step()
                if i >= 2:  # warm-up
                    times[name].append(seconds)
        baseline, online, cached = (statistics.mean(times[name]) * 1000 for name in ("baseline", "online", "cached"))
    print(json.dumps({
        "device": str(device), "bf16": bf16, "batch": args.batch, "size": args.size, "student": "resnet18",
        "teacher": "resnet50", "baseline_ms": round(baseline, 1), "online_ms": round(online, 1),
        "cached_ms": round(cached, 1), "cached_over_baseline": round(cached / baseline, 3),
        "cached_over_online": round(cached / online, 3),
    }))


if __name__ == "__main__":
    main()
