"""How `lad eval`'s time splits between inference and scoring on a COCO-sized split, and the
scorer's speed: pycocotools' COCOeval vs faster-coco-eval on the same detections.

    python -m benchmarks.eval_time [--images 5000] [--infer-images 8] [--device cpu] [--amp auto]

The split: 5,000 synthetic 1333x800 images, 7.3 GTs per image (COCO val's mean) over 80
categories, 1% of them crowd regions, 1% of the images empty; detections: 100 per image
(jittered GTs and random boxes, random scores), as `lad eval` writes them. Scoring runs on
the whole split; inference (the network's forward; post-processing excluded, see
`inference_seconds`) is timed on `--infer-images` images for two networks, a small one
(ResNet-18, width 64, at 160 px, the findings' size) and the paper's (ResNet-50, width 256, at
800x1333), and scaled to the split. Prints one JSON object with the share of the eval
spent scoring for each network and each scorer, and whether both scorers give the same
twelve numbers.
"""
import argparse
import contextlib
import io
import json
import time

import numpy as np
import torch
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lad_cli.model.build import new_detector
from lad_cli.runtime import autocast, use_bf16

W, H = 1333, 800


def coco_sized(images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """(ground truth dict, detections) of a synthetic COCO-sized split."""
    rng = np.random.default_rng(seed)
    doc = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(80)]}
    results = []
    for i in range(images):
        doc["images"].append({"id": i + 1, "file_name": f"{i}.jpg", "width": W, "height": H})
        count = 0 if rng.random() < 0.01 else int(rng.poisson(7.3))
        wh = np.exp(rng.uniform(np.log(8), np.log(600), (count, 2)))
        xy = rng.uniform(0, 1, (count, 2)) * (np.array([W, H]) - wh)
        cats = rng.integers(1, 81, count)
        for box, cat in zip(np.concatenate([xy, wh], 1), cats):
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i + 1, "category_id": int(cat),
                                       "bbox": [round(float(v), 2) for v in box], "area": float(box[2] * box[3]),
                                       "iscrowd": int(rng.random() < 0.01)})
        jitter = np.concatenate([xy, wh], 1)[rng.integers(0, max(count, 1), 100)] if count else np.zeros((100, 4))
        noise = rng.normal(0, 0.1, (100, 4)) * np.concatenate([wh.mean(0, keepdims=True)] * 2, 1) if count else 0
        boxes = np.where(rng.random((100, 1)) < 0.5, jitter + noise, rng.uniform(0, 1, (100, 4)) * [W, H, 300, 300])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
        labels = np.where(rng.random(100) < 0.7, cats[rng.integers(0, max(count, 1), 100)] if count else 1,
                          rng.integers(1, 81, 100))
        for box, cat, score in zip(boxes, labels, rng.random(100)):
            results.append({"image_id": i + 1, "category_id": int(cat), "bbox": [round(float(v), 2) for v in box],
                            "score": round(float(score), 5)})
    return doc, results


def score(gt_cls, eval_cls, doc: dict, results: list[dict]) -> tuple[float, list[float]]:
    """Seconds to build the index, load the detections, evaluate, accumulate and summarize."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = gt_cls()
        gt.dataset = json.loads(json.dumps(doc))
        gt.createIndex()
        ev = eval_cls(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.perf_counter() - start, [float(s) for s in ev.stats[:12]]


@torch.no_grad()
def inference_seconds(arch: str, width: int, depth: int, hw: tuple[int, int], images: int, device, bf16: bool) -> float:
    """Seconds per image of the network's forward (batch 1, after a warm-up). The
    post-processing is left out: on a new network every anchor passes the score threshold, so
    its NMS would take far longer than a trained detector's; leaving it out makes the scorer's
    share below an upper bound."""
    torch.manual_seed(0)
    net = new_detector(arch, 80, width, depth, None).to(device).eval()
    x = torch.randn(1, 3, *hw, device=device)
    times = []
    for i in range(images + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device, bf16):
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--infer-images", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto")
    args = p.parse_args()
    device = torch.device(args.device)
    bf16 = use_bf16(device, args.amp)
    doc, results = coco_sized(args.images)
    pyco_s, pyco_stats = score(COCO, COCOeval, doc, results)
    fast_s, fast_stats = score(FasterCOCO, COCOeval_faster, doc, results)
    networks = {"demo_resnet18_160px": ("resnet18", 64, 2, (256, 256)), "paper_resnet50_800px": ("resnet50", 256, 4, (896, 1408))}
    split = {}
    for name, (arch, width, depth, hw) in networks.items():
        infer = inference_seconds(arch, width, depth, hw, args.infer_images, device, bf16) * args.images
        split[name] = {"inference_s": round(infer, 1), "pycocotools_share": round(pyco_s / (infer + pyco_s), 3),
                       "faster_coco_eval_share": round(fast_s / (infer + fast_s), 3)}
    print(json.dumps({
        "images": args.images, "gts": len(doc["annotations"]), "detections": len(results), "device": str(device),
        "bf16": bf16, "pycocotools_s": round(pyco_s, 1), "faster_coco_eval_s": round(fast_s, 1),
        "scorer_speedup": round(pyco_s / fast_s, 2),
        "max_stat_difference": max(abs(a - b) for a, b in zip(pyco_stats, fast_stats)), "eval_split": split,
    }))


if __name__ == "__main__":
    main()
