"""Inference over a dataset: the one path of `lad eval`, `lad predict` and the check of an
exported model. Batches of one padded shape (the evaluation sampler), a detector that turns a
batch into detections in input pixels (the network + `model.postprocess`, or an exported
graph), boxes mapped back to each image's original pixels, the COCO results rounding."""
from typing import Callable

import torch

from .. import dist
from ..data.dataset import Batch
from ..data.loader import make_loader
from ..data.sampler import ViewBatchSampler
from ..data.views import to_original
from ..model.detector import PAADetector
from ..model.postprocess import InferenceParams, postprocess
from ..runtime import autocast
from ..structures import Detections

# A batch (on the device) -> per image of it, its detections in input (view) pixels.
BatchDetector = Callable[[Batch], list[Detections]]


def network_detector(model: PAADetector, device: torch.device, bf16: bool,
                     params: InferenceParams = InferenceParams()) -> BatchDetector:
    """The eager network (in eval mode, as the caller set it) and its post-processing."""
    def run(batch: Batch) -> list[Detections]:
        with autocast(device, bf16):
            pred = model(batch.images)
        anchors, counts = model.anchors(batch.padded_hw, device)
        return postprocess(pred, anchors, counts, batch.image_hw, params)
    return run


@torch.no_grad()
def detect(dataset, detector: BatchDetector, batch_size: int, device: torch.device, workers: int = 0,
           on_batch=None, indices: list[int] | None = None) -> list[tuple[int, Detections]]:
    """(image index, detections in the original image's pixels, on the CPU) for every image of
    `dataset` (a `DetectionDataset` or an `ImageFolder` of one view), or those at `indices`."""
    view = dataset.views[0]
    sampler = ViewBatchSampler(dataset.shapes(), batch_size, seed=0, shuffle=False, subset=indices)
    loader = make_loader(dataset, sampler, dataset.size_divisor, workers, device)
    out = []
    for batch in loader:
        batch = batch.to(device)
        for det, index in zip(detector(batch), batch.indices.tolist()):
            boxes = to_original(det.boxes.float().cpu(), *dataset.original_hw(index), view)
            out.append((index, Detections(boxes, det.scores.float().cpu(), det.labels.cpu())))
        if on_batch:
            on_batch(len(batch.indices))
    return out


@torch.no_grad()
def detect_with_network(model: PAADetector, dataset, batch_size: int, device: torch.device, workers: int = 0,
                        on_batch=None, params: InferenceParams = InferenceParams(), bf16: bool = False,
                        indices: list[int] | None = None) -> list[tuple[int, Detections]]:
    """`detect` with the eager network, in eval mode for the pass (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return detect(dataset, network_detector(model, device, bf16, params), batch_size, device, workers, on_batch,
                      indices)
    finally:
        model.train(was_training)


def detect_sharded(model: PAADetector, dataset, batch_size: int, ctx: dist.Dist, workers: int = 0, on_batch=None,
                   params: InferenceParams = InferenceParams(), bf16: bool = False) -> list[tuple[int, Detections]] | None:
    """`detect_with_network` with the images dealt out to the processes (image i to rank
    i mod N); rank 0 gets every image's detections in image order, the other ranks None."""
    mine = detect_with_network(model, dataset, batch_size, ctx.device, workers, on_batch, params, bf16,
                               indices=list(range(ctx.rank, len(dataset), ctx.world)))
    parts = dist.gather(ctx, mine)
    return None if parts is None else sorted((d for part in parts for d in part), key=lambda d: d[0])


def coco_records(image_id: int, det: Detections, category_ids: list[int]) -> list[dict]:
    """One image's detections as COCO results (xywh boxes in original pixels rounded to 0.01,
    scores to 1e-5, dataset category ids), as `lad eval --detections` and `lad predict` write them."""
    out = []
    for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        out.append({"image_id": image_id, "category_id": category_ids[label],
                    "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)],
                    "score": round(score, 5)})
    return out
