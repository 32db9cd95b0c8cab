"""Batched `paa_assign` vs the reference per-GT loop with sklearn, and batched `tal_assign`
vs its per-GT loop (tests/reference_tal.py), on the same predictions.

    python -m benchmarks.assign_speed [--images 16] [--gts 30] [--device cpu]

Two input sizes: the demo's (160 px shorter side: 256x256 padded, 1,364 anchors) and
COCO's (1333x800: 26,257 anchors). Prints one JSON object with, per size, both times,
the speed-up and how many images got identical positives; the TAL rows under "tal".
"""
import argparse
import json
import time
import warnings

import torch

from lad_cli.assign.paa import paa_assign
from lad_cli.assign.tal import tal_assign
from lad_cli.data.views import padded_hw
from lad_cli.model.anchors import AnchorLayout
from lad_cli.structures import Targets
from tests.reference_paa import reference_assign
from tests.reference_tal import reference_tal


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


def compare(args, hw: tuple[int, int]) -> dict:
    anchors, counts, cls, deltas, targets = make_inputs(args.images, args.gts, hw, args.classes, args.seed)
    device = torch.device(args.device)

    dev = [t.to(device) for t in (anchors, cls, deltas)]
    dev_targets = targets.to(device)
    paa_assign(dev[0], counts, dev[1][:1], dev[2][:1], dev_targets.select(slice(0, 1)))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    batched = paa_assign(dev[0], counts, dev[1], dev[2], dev_targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    reference = [reference_assign(anchors, counts, cls[i], deltas[i], targets.boxes[i], targets.labels[i])
                 for i in range(args.images)]
    reference_s = time.perf_counter() - start

    batched = batched.cpu()
    pos_ours = {(i, a, int(batched[i, a])) for i in range(args.images) for a in torch.nonzero(batched[i] >= 0).flatten().tolist()}
    pos_ref = {(i, a, int(reference[i][a])) for i in range(args.images) for a in torch.nonzero(reference[i] >= 0).flatten().tolist()}
    return {
        "input": f"{hw[1]}x{hw[0]}", "anchors": len(anchors), "batched_s": round(batched_s, 4),
        "reference_s": round(reference_s, 4), "speedup": round(reference_s / batched_s, 1),
        "identical_positive_fraction": len(pos_ours & pos_ref) / max(1, len(pos_ours | pos_ref)),
        "identical_images": sum(torch.equal(batched[i], reference[i]) for i in range(args.images)),
        "positives": len(pos_ref),
    }


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def compare_tal(args, hw: tuple[int, int]) -> dict:
    """tal_assign on the whole batch vs the per-GT loop image by image (both on the same
    inputs: box deltas small enough that the predictions overlap their GTs)."""
    anchors, counts, cls, deltas, targets = make_inputs(args.images, args.gts, hw, args.classes, args.seed)
    device = torch.device(args.device)
    dev_anchors, dev_cls, dev_deltas, dev_targets = anchors.to(device), cls.to(device), deltas.to(device), targets.to(device)
    tal_assign(dev_anchors, counts, dev_cls[:1], dev_deltas[:1], dev_targets.select(slice(0, 1)))  # warm-up
    batched, batched_s = timed(lambda: tal_assign(dev_anchors, counts, dev_cls, dev_deltas, dev_targets), device)
    reference, reference_s = timed(lambda: [reference_tal(anchors, cls[i], deltas[i], targets.boxes[i], targets.labels[i])
                                            for i in range(args.images)], torch.device("cpu"))
    batched = batched.cpu()
    return {"input": f"{hw[1]}x{hw[0]}", "anchors": len(anchors), "batched_s": round(batched_s, 4),
            "reference_s": round(reference_s, 4), "speedup": round(reference_s / batched_s, 1),
            "identical_images": sum(torch.equal(batched[i], reference[i]) for i in range(args.images)),
            "positives": int((batched >= 0).sum())}


def tal_rows(args) -> dict:
    return {"demo_size": compare_tal(args, (160, 213)), "coco_size": compare_tal(args, (800, 1333))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--gts", type=int, default=30)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    print(json.dumps({"images": args.images, "gts_per_image": args.gts, "device": args.device,
                      "demo_size": compare(args, (160, 213)), "coco_size": compare(args, (800, 1333)),
                      "tal": tal_rows(args)}))


if __name__ == "__main__":
    main()
