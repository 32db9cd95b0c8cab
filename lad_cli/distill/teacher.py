"""A frozen teacher and the canonical assignment of an (image, view)."""
from pathlib import Path

import torch
from torch import Tensor

from ..assign.registry import Assigner, assigner_named
from ..data.coco import CocoSplit
from ..data.dataset import Batch
from ..errors import LadError
from ..model.build import load_detector
from ..model.detector import PAADetector
from ..runtime import autocast
from ..structures import Predictions


class Teacher:
    """A trained detector, always in eval mode, never under autograd.

    Its predictions are computed image by image: CPU and GPU convolution kernels give
    results that depend (in the last bits) on how many images share a batch, and the
    canonical assignment of an (image, view) must not depend on its batch-mates: it is
    what `lad assign --cache` stores and what online LAD recomputes, bit for bit.
    """

    def __init__(self, path: Path, device: torch.device, bf16: bool = False):
        self.path = Path(path)
        model, self.checkpoint = load_detector(self.path)
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.bf16 = bf16
        try:
            self.assigner = assigner_named(self.checkpoint.get("assigner"))  # checkpoints before TAL: PAA
        except KeyError:
            raise LadError(f"{self.path}: trained with an assigner this lad does not know "
                           f"({self.checkpoint['assigner'].get('name')})") from None

    @property
    def categories(self) -> list[dict]:
        return self.checkpoint["categories"]

    def check_data(self, split: CocoSplit, role: str = "teacher") -> None:
        split.check_categories(self.categories, f"{self.path}: {role}")

    def check_compatible(self, student: PAADetector, split: CocoSplit) -> None:
        if self.model.config.layout != student.config.layout:
            raise LadError(f"{self.path}: teacher anchor layout {self.model.config.layout} differs from the student's")
        self.check_data(split)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Predictions:
        self.model.eval()  # a training loop's .train() on its modules must never reach the teacher
        parts = []
        for image in images.split(1):
            with autocast(self.device, self.bf16):
                parts.append(self.model(image))
        return Predictions(*(torch.cat([getattr(p, f) for p in parts]).float() for f in ("cls_logits", "box_deltas", "iou_logits")))

    def assign(self, batch: Batch, assigner: Assigner | None = None) -> tuple[Tensor, Predictions]:
        """matched_idxs (N, A) of the batch (on the teacher's device) and the teacher's outputs;
        by the teacher's own assigner unless another is given."""
        pred = self.predict(batch.images)
        anchors, counts = self.model.anchors(batch.padded_hw, self.device)
        return (assigner or self.assigner).assign(anchors, counts, pred, batch.targets), pred
