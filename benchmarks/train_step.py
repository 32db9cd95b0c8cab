"""Training-step throughput: our PAA detector vs torchvision's RetinaNet, same backbone depth,
FPN width, input size and batch, in one run.

    python -m benchmarks.train_step [--arch resnet18] [--size 384] [--width-px W] [--batch 2] [--iters 6] [--device cpu]

Images are `--size` x `--width-px` (default square); lad pads them to a multiple of 128,
RetinaNet's transform to 32. Prints one JSON object with images/s of each and the ratio
(ours / RetinaNet), and each one's peak memory on CUDA.
"""
import argparse
import json
import statistics
import time

import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lad_cli.assign.paa import paa_assign
from lad_cli.losses import detection_loss
from lad_cli.model.detector import DetectorConfig, PAADetector
from lad_cli.runtime import autocast
from lad_cli.structures import Targets


def batch_of(n, hw, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, *hw, generator=g)
    boxes, labels = [], []
    for _ in range(n):
        xy = torch.rand(5, 2, generator=g) * min(hw) * 0.6
        boxes.append(torch.cat([xy, xy + 16 + torch.rand(5, 2, generator=g) * min(hw) * 0.3], 1))
        labels.append(torch.randint(0, classes, (5,), generator=g))
    return images, boxes, labels


def time_steps(step, iters, device):
    times = []
    for i in range(iters + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gb(device: torch.device) -> float | None:
    """Peak CUDA memory since the last reset, GiB (None on the CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run(arch: str = "resnet18", hw: tuple[int, int] = (384, 384), batch: int = 2, width: int = 256, classes: int = 80,
        iters: int = 6, device: str = "cpu") -> dict:
    device = torch.device(device)
    images, boxes, labels = batch_of(batch, hw, classes)
    padded = tuple(-(-s // 128) * 128 for s in hw)
    torch.manual_seed(0)
    ours = PAADetector(DetectorConfig(arch, classes, width, 4)).to(device).train()
    opt = torch.optim.SGD(ours.parameters(), lr=0.001, momentum=0.9)
    targets = Targets.from_lists(boxes, labels, [torch.zeros(0, 4)] * batch).to(device)
    x = torch.nn.functional.pad(images, (0, padded[1] - hw[1], 0, padded[0] - hw[0])).to(device)

    def ours_step():
        with autocast(device):
            pred = ours(x)
        anchors, counts = ours.anchors(padded, device)
        matched = paa_assign(anchors, counts, pred.cls_logits, pred.box_deltas, targets)
        loss = sum(detection_loss(pred.cls_logits, pred.box_deltas, pred.iou_logits, anchors, matched, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    if width != 256:
        raise SystemExit("torchvision's resnet_fpn_backbone has a fixed FPN width of 256")
    backbone = resnet_fpn_backbone(backbone_name=arch, weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(width, width))
    retina = RetinaNet(backbone, num_classes=classes, min_size=min(hw), max_size=max(hw)).to(device).train()
    ropt = torch.optim.SGD(retina.parameters(), lr=0.001, momentum=0.9)
    rimages = [im.to(device) for im in images]
    rtargets = [{"boxes": b.to(device), "labels": lab.to(device)} for b, lab in zip(boxes, labels)]

    def retina_step():
        with autocast(device):
            losses = retina(rimages, rtargets)
        loss = sum(losses.values())
        ropt.zero_grad()
        loss.backward()
        ropt.step()

    reset_peak(device)
    ours_s = time_steps(ours_step, iters, device)
    ours_peak = peak_gb(device)
    reset_peak(device)
    retina_s = time_steps(retina_step, iters, device)
    return {
        "arch": arch, "input": f"{hw[1]}x{hw[0]}", "batch": batch, "fpn_width": width, "device": str(device), "amp": "bf16",
        "paa_images_per_s": round(batch / ours_s, 2), "retinanet_images_per_s": round(batch / retina_s, 2),
        "ratio": round(retina_s / ours_s, 2), "paa_peak_gb": ours_peak, "retinanet_peak_gb": peak_gb(device),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--width-px", type=int, default=None, help="image width (default: --size)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    print(json.dumps(run(a.arch, (a.size, a.width_px or a.size), a.batch, a.width, a.classes, a.iters, a.device)))


if __name__ == "__main__":
    main()
