"""Assignment sources: where a batch's assignment comes from. The loop is the same for all."""
from dataclasses import dataclass, field

from torch import Tensor

from ..assign.paa import PAAParams, paa_assign
from ..data.dataset import Batch
from ..model.detector import Predictions


@dataclass
class SourceOutput:
    matched_idxs: Tensor  # (N, A) int64
    stats: dict[str, Tensor] = field(default_factory=dict)  # scalars logged with the losses
    teacher: Predictions | None = None  # the teacher's outputs, for soft-label terms


class OwnAssignment:
    """PAA on the network's own (detached) predictions: the PAA baseline, `teacher-train`."""

    box_weighting = "iou"

    def __init__(self, params: PAAParams = PAAParams()):
        self.params = params

    def __call__(self, batch: Batch, preds: dict[str, Predictions], anchors: Tensor, counts: list[int]) -> SourceOutput:
        own = preds["student"]
        return SourceOutput(paa_assign(anchors, counts, own.cls_logits, own.box_deltas, batch.targets, self.params))
