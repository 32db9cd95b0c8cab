"""Co-learning LAD (docs/method.md, "Co-learning"): two networks, one assignment, a dynamic switch."""
import torch
from torch import Tensor

from ..structures import Predictions, Targets
from .paa import PAAParams, assign_from_costs, candidate_costs, candidates

SWITCH_RULES = ("gt-level", "iteration")


def spread(cost: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """count, mean and std/mean of the costs under `mask`, reduced over the last dim."""
    count = mask.sum(-1)
    mean = torch.where(mask, cost, 0.0).sum(-1) / count.clamp(min=1)
    var = torch.where(mask, (cost - mean[..., None]) ** 2, 0.0).sum(-1) / count.clamp(min=1)
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
    with torch.no_grad():
        cand = candidates(anchors, targets, params)
        cost_a = candidate_costs(anchors, first.cls_logits, first.box_deltas, cand, targets, params)
        cost_b = candidate_costs(anchors, second.cls_logits, second.box_deltas, cand, targets, params)
        if rule == "iteration":
            valid = cand >= 0
            first_wins = flat_spread(cost_a[valid]) >= flat_spread(cost_b[valid])
            return assign_from_costs(torch.where(first_wins, cost_a, cost_b), cand, num_per_level, targets, params,
                                     anchors), first_wins.float()
        cost = torch.empty_like(cost_a)
        wins = torch.zeros((), device=cand.device)
        decisions = torch.zeros((), device=cand.device)
        gt_index = torch.arange(targets.labels.shape[1], device=cand.device)[None, :, None]
        start = 0
        for count in num_per_level:
            sl = slice(start, start + count)
            mask = cand[:, None, sl] == gt_index  # (N, M, A_l)
            n_a, mean_a, rho_a = spread(cost_a[:, None, sl], mask)
            _, mean_b, rho_b = spread(cost_b[:, None, sl], mask)
            first_wins = torch.where(n_a == 1, mean_a <= mean_b, rho_a >= rho_b)  # (N, M)
            pick = torch.gather(first_wins, 1, cand[:, sl].clamp(min=0))
            cost[:, sl] = torch.where(pick, cost_a[:, sl], cost_b[:, sl])
            wins += (first_wins & (n_a > 0)).sum()
            decisions += (n_a > 0).sum()
            start += count
        return assign_from_costs(cost, cand, num_per_level, targets, params, anchors), wins / decisions.clamp(min=1)
