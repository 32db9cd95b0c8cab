"""Training-step throughput: our PAA detector vs torchvision's RetinaNet, same backbone depth,
FPN width, input size and batch, in one run.

    python -m benchmarks.train_step [--arch resnet18] [--size 384] [--batch 2] [--iters 6] [--device cpu]

Prints one JSON object with images/s of each and the ratio (ours / RetinaNet).
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


def batch_of(n, size, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    boxes, labels = [], []
    for _ in range(n):
        xy = torch.rand(5, 2, generator=g) * size * 0.6
        boxes.append(torch.cat([xy, xy + 16 + torch.rand(5, 2, generator=g) * size * 0.3], 1))
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    images, boxes, labels = batch_of(args.batch, args.size, args.classes)

    torch.manual_seed(0)
    ours = PAADetector(DetectorConfig(args.arch, args.classes, args.width, 4)).to(device).train()
    opt = torch.optim.SGD(ours.parameters(), lr=0.001, momentum=0.9)
    targets = Targets.from_lists(boxes, labels, [torch.zeros(0, 4)] * args.batch).to(device)
    x = images.to(device)

    def ours_step():
        with autocast(device):
            pred = ours(x)
        anchors, counts = ours.anchors((args.size, args.size), device)
        matched = paa_assign(anchors, counts, pred.cls_logits, pred.box_deltas, targets)
        loss = sum(detection_loss(pred.cls_logits, pred.box_deltas, pred.iou_logits, anchors, matched, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    backbone = resnet_fpn_backbone(backbone_name=args.arch, weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(args.width, args.width))
    if args.width != 256:
        raise SystemExit("torchvision's resnet_fpn_backbone has a fixed FPN width of 256")
    retina = RetinaNet(backbone, num_classes=args.classes, min_size=args.size, max_size=args.size).to(device).train()
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

    ours_s = time_steps(ours_step, args.iters, device)
    retina_s = time_steps(retina_step, args.iters, device)
    print(json.dumps({
        "arch": args.arch, "size": args.size, "batch": args.batch, "fpn_width": args.width, "device": str(device), "amp": "bf16",
        "paa_images_per_s": round(args.batch / ours_s, 2), "retinanet_images_per_s": round(args.batch / retina_s, 2),
        "ratio": round(retina_s / ours_s, 2),
    }))


if __name__ == "__main__":
    main()
