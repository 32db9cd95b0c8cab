"""Co-learning LAD (docs/method.md, "Co-learning"): two networks, one assignment, a dynamic switch."""
import torch
from torch import Tensor

from ..choices import SWITCH_RULES
from ..model.anchors import anchor_levels
from ..structures import Predictions, Targets
from .paa import (
    CandidateList,
    PAAParams,
    assign_from_costs,
    candidate_costs,
    candidates,
)


def _group_spread(cost: Tensor, group: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """count, mean and std/mean (population std) of the costs (K,) of each group id in
    [0, groups): three (groups,) tensors; empty groups count 0."""
    count = torch.zeros(groups, device=cost.device).index_add_(0, group, torch.ones_like(cost))
    mean = torch.zeros(groups, device=cost.device).index_add_(0, group, cost) / count.clamp(min=1)
    var = torch.zeros(groups, device=cost.device).index_add_(0, group, (cost - mean[group]) ** 2) / count.clamp(min=1)
    return count, mean, var.sqrt() / mean.clamp(min=1e-12)


def flat_spread(values: Tensor) -> Tensor:
    """std/mean of a flat set of costs (0 when empty)."""
    if values.numel() == 0:
        return values.new_zeros(())
    return values.std(correction=0) / values.mean().clamp(min=1e-12)


def colearn_assign(anchors: Tensor, num_per_level: list[int], first: Predictions, second: Predictions,
                   targets: Targets, rule: str = "gt-level", params: PAAParams = PAAParams()) -> tuple[Tensor, Tensor]:
    """One assignment for both networks and the share of decisions won by `first`.

    rule "gt-level" (the authors' released code): per GT and pyramid level, the network whose
    candidate costs have the larger std/mean defines that level's costs (one candidate: the
    lower cost wins); "iteration" (the paper): the network with the larger std/mean over all
    candidates of the batch defines every cost. Returns matched_idxs (N, A) and a scalar.
    """
    if rule not in SWITCH_RULES:
        raise ValueError(f"unknown co-learning switch {rule!r}: use {', '.join(SWITCH_RULES)}")
    with torch.no_grad():
        cands = CandidateList.of(candidates(anchors, targets, params))
        cost_a = candidate_costs(anchors, first.cls_logits, first.box_deltas, cands, targets, params)
        cost_b = candidate_costs(anchors, second.cls_logits, second.box_deltas, cands, targets, params)
        if rule == "iteration":
            first_wins = flat_spread(cost_a) >= flat_spread(cost_b)
            return assign_from_costs(torch.where(first_wins, cost_a, cost_b), cands, num_per_level, targets, params,
                                     anchors), first_wins.float()
        n, m = targets.labels.shape
        levels = len(num_per_level)
        group = (cands.image * m + cands.gt) * levels + anchor_levels(num_per_level, cost_a.device)[cands.anchor]
        n_a, mean_a, rho_a = _group_spread(cost_a, group, n * m * levels)
        _, mean_b, rho_b = _group_spread(cost_b, group, n * m * levels)
        first_wins = torch.where(n_a == 1, mean_a <= mean_b, rho_a >= rho_b)  # per (image, GT, level)
        cost = torch.where(first_wins[group], cost_a, cost_b)
        share = (first_wins & (n_a > 0)).sum() / (n_a > 0).sum().clamp(min=1)
        return assign_from_costs(cost, cands, num_per_level, targets, params, anchors), share
