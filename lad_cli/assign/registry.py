"""The assigners by name: how a network's own predictions become an assignment, how two
co-learning networks share one, and the head loss that trains on it. The training loop and
the sources ask an `Assigner`; nothing else looks at the name.

Shapes as `paa_assign`: anchors (A, 4), predictions of N images, matched_idxs (N, A) int64.
"""
import abc
from typing import Callable

from torch import Tensor

from ..losses import (
    LossWeights,
    TALLossWeights,
    detection_loss,
    tal_loss,
    tal_soft_target,
)
from ..structures import Predictions, Targets
from .atss import ATSSParams, atss_assign
from .colearn import colearn_assign
from .paa import PAAParams, candidates, paa_assign
from .tal import TALParams, tal_assign, tal_colearn_assign


class Assigner(abc.ABC):
    name: str
    params: object
    soft_targets = False  # whether `soft_target` gives a class target (TAL's alignment) or None (one-hot)

    @abc.abstractmethod
    def assign(self, anchors: Tensor, counts: list[int], pred: Predictions, targets: Targets) -> Tensor:
        """A network's own assignment from its (detached) predictions."""

    @abc.abstractmethod
    def colearn(self, anchors: Tensor, counts: list[int], first: Predictions, second: Predictions, targets: Targets,
                rule: str) -> tuple[Tensor, Tensor]:
        """One assignment for two co-learning networks and the share of decisions `first` won."""

    def loss(self, pred: Predictions, anchors: Tensor, matched: Tensor, targets: Targets, weights: LossWeights,
             process_mean: Callable, soft_target: Tensor | None = None) -> dict[str, Tensor]:
        """loss_cls, loss_box, loss_iou of one network trained on `matched` (PAA's head loss)."""
        return detection_loss(pred.cls_logits, pred.box_deltas, pred.iou_logits, anchors, matched, targets, weights,
                              process_mean)

    def soft_target(self, anchors: Tensor, pred: Predictions, matched: Tensor, targets: Targets) -> Tensor | None:
        """The classification target `pred` gives to the positives of `matched` (None: one-hot)."""
        return None

    def candidates(self, anchors: Tensor, targets: Targets) -> Tensor | None:
        """(N, A) GT index of each anchor's candidacy, for `lad assign`'s statistics (None: not static)."""
        return None

    def record(self) -> dict:
        """What checkpoints and caches store: the name and every parameter."""
        return {"name": self.name, **self.params.to_dict()}


class PAA(Assigner):
    name, params = "paa", PAAParams()

    def assign(self, anchors, counts, pred, targets):
        return paa_assign(anchors, counts, pred.cls_logits, pred.box_deltas, targets, self.params)

    def colearn(self, anchors, counts, first, second, targets, rule):
        return colearn_assign(anchors, counts, first, second, targets, rule, self.params)

    def candidates(self, anchors, targets):
        return candidates(anchors, targets, self.params)


class TAL(Assigner):
    name, params = "tal", TALParams()
    soft_targets = True

    def assign(self, anchors, counts, pred, targets):
        return tal_assign(anchors, counts, pred.cls_logits, pred.box_deltas, targets, self.params)

    def colearn(self, anchors, counts, first, second, targets, rule):
        return tal_colearn_assign(anchors, counts, first, second, targets, rule, self.params)

    def soft_target(self, anchors, pred, matched, targets):
        return tal_soft_target(anchors, pred.cls_logits, pred.box_deltas, matched, targets, self.params.alpha,
                               self.params.beta)

    def loss(self, pred, anchors, matched, targets, weights, process_mean, soft_target=None):
        if soft_target is None:  # the network's own alignment on these positives
            soft_target = self.soft_target(anchors, pred, matched, targets)
        return tal_loss(pred.cls_logits, pred.box_deltas, pred.iou_logits, anchors, matched, targets, soft_target,
                        TALLossWeights(), process_mean)


class ATSS(Assigner):
    """The static warm-up assigner (TOOD's first epochs); trains with PAA's head loss."""

    name, params = "atss", ATSSParams()

    def assign(self, anchors, counts, pred, targets):
        return atss_assign(anchors, counts, targets, self.params)

    def colearn(self, anchors, counts, first, second, targets, rule):
        return self.assign(anchors, counts, first, targets), first.cls_logits.new_ones(())


ASSIGNERS: dict[str, Assigner] = {a.name: a for a in (PAA(), TAL())}  # what --assigner takes
WARMUP = ATSS()


def assigner_named(record: str | dict | None) -> Assigner:
    """The assigner of a name or of a stored record ({"name": ...}; None and records without
    a name, written before TAL existed, are PAA). KeyError for an unknown name."""
    name = (record or {}).get("name", "paa") if not isinstance(record, str) else record
    return ASSIGNERS[name]
