"""Batched `paa_assign` vs the reference per-GT loop with sklearn, and batched `tal_assign`
vs its per-GT loop (tests/reference_tal.py), on the same predictions.

    python -m benchmarks.assign_speed [--images 16] [--gts 30] [--device cpu]

Two input sizes: a small one (key demo_size: 160 px shorter side, the findings scripts' size,
256x256 padded, 1,364 anchors) and
COCO's (1333x800: 26,257 anchors). Prints one JSON object with, per size, both times
(median of 3 runs each), the speed-up and how many images got identical positives; and the
peak memory of one assignment at COCO size with 100 GTs per image (measured in a fresh
process: the growth of its peak resident size), next to what one dense (N, M, A) float32
IoU matrix would take; the TAL rows under "tal" (with the same peak-memory measurement).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from lad_cli.assign.paa import paa_assign
from lad_cli.assign.tal import tal_assign
from lad_cli.data.views import padded_hw
from lad_cli.model.anchors import AnchorLayout
from lad_cli.structures import Targets
from tests.reference_paa import reference_assign
from tests.reference_tal import reference_tal
from tests.test_assign import images_of


def make_inputs(images: int, gts: int, hw: tuple[int, int], classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    layout = AnchorLayout()
    padded = padded_hw(*hw, layout.size_divisor)
    anchors, counts = layout.anchors(padded), layout.num_per_level(padded)
    boxes, labels = [], []
    for _ in range(images):
        wh = 8 + torch.rand(gts, 2, generator=g) * 0.4 * min(hw)
        xy = torch.rand(gts, 2, generator=g) * (torch.tensor([hw[1], hw[0]]) - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(0, classes, (gts,), generator=g))
    targets = Targets.from_lists(boxes, labels, [torch.zeros(0, 4)] * images)
    # Predictions of a half-trained detector: logits around the prior, small box corrections.
    cls = torch.randn(images, len(anchors), classes, generator=g) - 3
    deltas = torch.randn(images, len(anchors), 4, generator=g) * 0.3
    return anchors, counts, cls, deltas, targets


def median_seconds(fn, device: torch.device, runs: int = 3):
    """(median seconds, the last result) of `runs` calls."""
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


ASSIGN = {"paa": paa_assign, "tal": tal_assign}


def peak_memory(images: int, gts: int, classes: int, seed: int, assigner: str = "paa") -> dict:
    """In this (fresh) process: the peak resident size an assignment adds, at COCO size (Linux)."""
    assign = ASSIGN[assigner]
    anchors, counts, cls, deltas, targets = make_inputs(images, gts, (800, 1333), classes, seed)
    assign(anchors, counts, cls[:1], deltas[:1], images_of(targets, slice(0, 1)))  # warm-up at a small size
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak resident size restarts from here
    before = _status_kb("VmRSS")
    assign(anchors, counts, cls, deltas, targets)
    grown = _status_kb("VmHWM") - before
    inputs = sum(t.numel() * t.element_size() for t in (anchors, cls, deltas, targets.boxes))
    return {"images": images, "gts_per_image": gts, "anchors": len(anchors), "peak_growth_mb": round(grown / 1024, 1),
            "inputs_mb": round(inputs / 2**20, 1),
            "dense_iou_matrix_mb": round(images * gts * len(anchors) * 4 / 2**20, 1)}


def compare(images: int, gts: int, classes: int, seed: int, device: str, hw: tuple[int, int]) -> dict:
    """Batched (on `device`) vs the reference (CPU) on one batch of `images` x `gts`."""
    anchors, counts, cls, deltas, targets = make_inputs(images, gts, hw, classes, seed)
    device = torch.device(device)

    dev = [t.to(device) for t in (anchors, cls, deltas)]
    dev_targets = targets.to(device)
    paa_assign(dev[0], counts, dev[1][:1], dev[2][:1], images_of(dev_targets, slice(0, 1)))  # warm-up
    batched_s, batched = median_seconds(lambda: paa_assign(dev[0], counts, dev[1], dev[2], dev_targets), device)
    reference_s, reference = median_seconds(lambda: [reference_assign(
        anchors, counts, cls[i], deltas[i], targets.boxes[i], targets.labels[i]) for i in range(images)], device)

    batched = batched.cpu()
    pos_ours = {(i, a, int(batched[i, a])) for i in range(images) for a in torch.nonzero(batched[i] >= 0).flatten().tolist()}
    pos_ref = {(i, a, int(reference[i][a])) for i in range(images) for a in torch.nonzero(reference[i] >= 0).flatten().tolist()}
    return {
        "input": f"{hw[1]}x{hw[0]}", "anchors": len(anchors), "batched_s": round(batched_s, 4),
        "reference_s": round(reference_s, 4), "speedup": round(reference_s / batched_s, 1),
        "identical_positive_fraction": len(pos_ours & pos_ref) / max(1, len(pos_ours | pos_ref)),
        "identical_images": sum(torch.equal(batched[i], reference[i]) for i in range(images)),
        "positives": len(pos_ref),
    }


def compare_tal(args, hw: tuple[int, int]) -> dict:
    """tal_assign on the whole batch vs the per-GT loop image by image (both on the same
    inputs: box deltas small enough that the predictions overlap their GTs)."""
    anchors, counts, cls, deltas, targets = make_inputs(args.images, args.gts, hw, args.classes, args.seed)
    device = torch.device(args.device)
    dev_anchors, dev_cls, dev_deltas, dev_targets = anchors.to(device), cls.to(device), deltas.to(device), targets.to(device)
    tal_assign(dev_anchors, counts, dev_cls[:1], dev_deltas[:1], images_of(dev_targets, slice(0, 1)))  # warm-up
    batched_s, batched = median_seconds(lambda: tal_assign(dev_anchors, counts, dev_cls, dev_deltas, dev_targets), device)
    reference_s, reference = median_seconds(lambda: [reference_tal(anchors, cls[i], deltas[i], targets.boxes[i],
                                                                   targets.labels[i]) for i in range(args.images)], device)
    batched = batched.cpu()
    return {"input": f"{hw[1]}x{hw[0]}", "anchors": len(anchors), "batched_s": round(batched_s, 4),
            "reference_s": round(reference_s, 4), "speedup": round(reference_s / batched_s, 1),
            "identical_images": sum(torch.equal(batched[i], reference[i]) for i in range(args.images)),
            "positives": int((batched >= 0).sum())}


def tal_rows(args) -> dict:
    return {"demo_size": compare_tal(args, (160, 213)), "coco_size": compare_tal(args, (800, 1333)),
            "coco_size_100_gts_memory": json.loads(_memory_run(args, "tal"))}


def _memory_run(args, assigner: str) -> str:
    """`peak_memory` in a fresh process (its peak resident size must be this assignment's)."""
    return subprocess.run([sys.executable, "-m", "benchmarks.assign_speed", "--images", str(args.images),
                           "--peak-memory-gts", "100", "--peak-memory-assigner", assigner],
                          capture_output=True, text=True, check=True).stdout


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--gts", type=int, default=30)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-memory-gts", type=int, default=None, help=argparse.SUPPRESS)  # the memory run's own process
    p.add_argument("--peak-memory-assigner", choices=sorted(ASSIGN), default="paa", help=argparse.SUPPRESS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.peak_memory_gts is not None:
        print(json.dumps(peak_memory(args.images, args.peak_memory_gts, args.classes, args.seed,
                                     args.peak_memory_assigner)))
        return
    memory = _memory_run(args, "paa")
    print(json.dumps({"images": args.images, "gts_per_image": args.gts, "device": args.device,
                      "cpu_threads": torch.get_num_threads(),
                      "demo_size": compare(args.images, args.gts, args.classes, args.seed, args.device, (160, 213)),
                      "coco_size": compare(args.images, args.gts, args.classes, args.seed, args.device, (800, 1333)),
                      "coco_size_100_gts_memory": json.loads(memory), "tal": tal_rows(args)}))


if __name__ == "__main__":
    main()
