"""What PAA saw for each GT of one image: its pooled candidate costs, the fitted mixture and
the positives, for pictures and debugging. The same steps as `paa_assign` (via
`paa.fit_pooled`), so the positives here are exactly the ones it assigns."""
from dataclasses import dataclass

import torch
from torch import Tensor

from ..structures import Targets
from .paa import CandidateList, PAAParams, candidate_costs, candidates, fit_pooled


@dataclass
class GTFit:
    """One GT's mixture fit. costs (K,) float32 ascending and anchor_idx (K,) int64: its pooled
    candidates (K <= levels x topk); positive (K,) bool; weights, means, variances (2,) float64,
    component 0 the low-cost one (meaningful only when `fitted`)."""

    costs: Tensor
    anchor_idx: Tensor
    positive: Tensor
    weights: Tensor
    means: Tensor
    variances: Tensor
    iterations: int

    @property
    def fitted(self) -> bool:
        """PAA fits a mixture (and may pick positives) only with 2 or more candidates."""
        return len(self.costs) >= 2

    @property
    def cut(self) -> float | None:
        """The cost of the last positive: candidates up to it are positives."""
        return float(self.costs[self.positive].max()) if self.positive.any() else None


def gt_fits(anchors: Tensor, num_per_level: list[int], cls_logits: Tensor, box_deltas: Tensor, targets: Targets,
            params: PAAParams = PAAParams()) -> list[GTFit]:
    """Per valid GT of one image, its candidates, mixture and positives, on the CPU.

    anchors (A, 4); cls_logits (A, C); box_deltas (A, 4); targets of one image (N = 1).
    """
    if targets.labels.shape[0] != 1:
        raise ValueError(f"gt_fits takes one image, got {targets.labels.shape[0]}")
    num_gts = int(targets.valid.sum())
    if num_gts == 0:
        return []
    with torch.no_grad():
        cands = CandidateList.of(candidates(anchors, targets, params))
        cost = candidate_costs(anchors, cls_logits[None], box_deltas[None], cands, targets, params)
        fit = fit_pooled(cost, cands, num_per_level, 1, targets.labels.shape[1], params)
    mix = fit.mixture
    out = []
    for g in range(num_gts):
        keep = torch.isfinite(fit.costs[0, g])
        out.append(GTFit(fit.costs[0, g][keep].cpu(), fit.anchor_idx[0, g][keep].cpu(), fit.positive[0, g][keep].cpu(),
                         mix.weights[g].cpu(), mix.means[g].cpu(), mix.variances[g].cpu(), int(mix.iterations[g])))
    return out
