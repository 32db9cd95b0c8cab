"""An exported file as a detector, and its check against the eager network: both score the
same split through `lad eval`'s inference (`engine.inference`), one image at a time."""
from pathlib import Path

import torch

from ..data.coco import CocoSplit
from ..data.dataset import Batch, DetectionDataset
from ..data.views import View
from ..engine.evaluate import METRIC_KEYS, coco_metrics
from ..engine.inference import BatchDetector, coco_records, detect, detect_with_network
from ..errors import LadError
from ..model.detector import PAADetector
from ..structures import Detections


def exported_detector(path: Path, fmt: str) -> BatchDetector:
    """The file written by `lad export` (onnxruntime on the CPU for ONNX, torch.jit for
    TorchScript), run image by image on a batch."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise LadError("checking an ONNX file needs onnxruntime: pip install onnxruntime (or lad-cli[export])") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_one(image: torch.Tensor, size: torch.Tensor):
            return [torch.from_numpy(a) for a in session.run(None, {"image": image.numpy(), "image_size": size.numpy()})]
    else:
        module = torch.jit.load(str(path), map_location="cpu")

        def run_one(image: torch.Tensor, size: torch.Tensor):
            with torch.no_grad():
                return module(image, size)

    def run(batch: Batch) -> list[Detections]:
        images = batch.images.float().cpu()
        return [Detections(*run_one(images[i:i + 1], torch.tensor(hw, dtype=torch.int64)))
                for i, hw in enumerate(batch.image_hw)]
    return run


def compare(eager: list[tuple[int, Detections]], exported: list[tuple[int, Detections]]) -> dict:
    """Per image: the same detections (as many of each class), paired by `match`, and how far
    their boxes (original pixels) and scores are apart; images where they differ are counted apart."""
    other, box_diff, score_diff = 0, 0.0, 0.0
    theirs = dict(exported)
    for index, a in eager:
        b = theirs[index]
        pairs = match(a, b)
        if pairs is None:
            other += 1
        elif len(pairs):
            box_diff = max(box_diff, float((a.boxes - b.boxes[pairs]).abs().max()))
            score_diff = max(score_diff, float((a.scores - b.scores[pairs]).abs().max()))
    return {"images_compared": len(eager) - other, "images_with_other_detections": other,
            "max_box_diff": box_diff, "max_score_diff": score_diff}


def match(a: Detections, b: Detections) -> torch.Tensor | None:
    """For each detection of `a`, the index of its counterpart in `b`: same class, nearest box
    (scores that tie to float noise may come in either order); None when the two do not hold
    as many detections of each class."""
    labels_b = b.labels.to(a.labels.dtype)
    if len(a.labels) != len(b.labels) or not torch.equal(a.labels.sort().values, labels_b.sort().values):
        return None
    gap = (a.boxes[:, None] - b.boxes[None]).abs().amax(-1)  # (D, D)
    gap[a.labels[:, None] != labels_b[None]] = float("inf")
    free = torch.ones(len(b.labels), dtype=torch.bool)
    pairs = torch.zeros(len(a.labels), dtype=torch.int64)
    for i in range(len(a.labels)):  # greedy nearest: true pairs are ~1e-4 px apart, the others pixels
        pairs[i] = torch.where(free, gap[i], float("inf")).argmin()
        free[pairs[i]] = False
    return pairs


def check_export(path: Path, fmt: str, net: PAADetector, ckpt: dict, split: CocoSplit) -> dict:
    """The eager network (float32) and the exported file on every image of a split: COCO
    metrics of each (None where the split has no GT), and their detections compared image by image."""
    dataset = DetectionDataset(split, [View("orig", ckpt["size"], ckpt["max_size"], False)], net.config.layout.size_divisor)
    cpu = torch.device("cpu")
    eager = detect_with_network(net, dataset, 1, cpu)
    exported = detect(dataset, exported_detector(path, fmt), 1, cpu)
    category_ids = [c["id"] for c in split.categories]
    metrics = {}
    for name, found in (("eager", eager), ("exported", exported)):
        records = [r for index, det in found for r in coco_records(split.images[index].id, det, category_ids)]
        metrics[name] = {k: v for k, v in coco_metrics(split, records).items() if k in METRIC_KEYS}
    # A split without GT has no AP (None, as `lad eval` reports it); the detections are still compared.
    aps = metrics["exported"]["AP"], metrics["eager"]["AP"]
    ap_diff = None if None in aps else abs(aps[0] - aps[1])
    return {"annotations": str(split.ann_file), "images": len(split.images), **compare(eager, exported),
            "eager": metrics["eager"], "exported": metrics["exported"], "AP_difference": ap_diff}
