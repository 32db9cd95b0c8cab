"""Co-learning switch and soft-label terms, against direct computations."""
import torch

from lad_cli.assign.colearn import colearn_assign
from lad_cli.assign.paa import PAAParams, candidate_costs, candidates, paa_assign
from lad_cli.losses import SoftLabelWeights, binary_kl_with_logits, soft_label_loss
from lad_cli.model.detector import Predictions
from tests.test_assign import random_batch


def preds(cls, deltas):
    return Predictions(cls, deltas, torch.zeros(cls.shape[:2]))


def test_same_network_twice_is_plain_paa():
    anchors, counts, cls, deltas, targets = random_batch(3, n=2, max_gts=5)
    expected = paa_assign(anchors, counts, cls, deltas, targets)
    for rule in ("gt-level", "iteration"):
        matched, share = colearn_assign(anchors, counts, preds(cls, deltas), preds(cls, deltas), targets, rule)
        assert torch.equal(matched, expected) and float(share) == 1.0


def test_iteration_rule_picks_the_larger_std_over_mean():
    anchors, counts, cls, deltas, targets = random_batch(4, n=2, max_gts=5)
    other_cls, other_deltas = cls * 0.1, deltas * 0.1  # flatter costs: a smaller std/mean
    cand = candidates(anchors, targets, PAAParams())
    rho = []
    for c, d in ((cls, deltas), (other_cls, other_deltas)):
        cost = candidate_costs(anchors, c, d, cand, targets, PAAParams())[cand >= 0]
        rho.append(float(cost.std(correction=0) / cost.mean()))
    winner = (cls, deltas) if rho[0] >= rho[1] else (other_cls, other_deltas)
    matched, share = colearn_assign(anchors, counts, preds(cls, deltas), preds(other_cls, other_deltas), targets, "iteration")
    assert torch.equal(matched, paa_assign(anchors, counts, *winner, targets))
    assert float(share) == float(rho[0] >= rho[1])


def test_gt_level_rule_mixes_both_networks():
    anchors, counts, cls, deltas, targets = random_batch(5, n=2, max_gts=8)
    g = torch.Generator().manual_seed(0)
    other = preds(torch.randn(cls.shape, generator=g) - 2, torch.randn(deltas.shape, generator=g) * 0.5)
    matched, share = colearn_assign(anchors, counts, preds(cls, deltas), other, targets, "gt-level")
    assert 0 < float(share) < 1 and (matched >= 0).any()


def test_binary_kl_by_formula_and_zero_for_identical_outputs():
    s, t = torch.randn(50), torch.randn(50)
    ps, pt = s.sigmoid(), t.sigmoid()
    direct = pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()
    torch.testing.assert_close(binary_kl_with_logits(s, t), direct, atol=1e-5, rtol=1e-4)
    anchors, counts, cls, deltas, targets = random_batch(6, n=2, max_gts=4)
    same = Predictions(cls, deltas, torch.randn(cls.shape[:2]))
    losses = soft_label_loss(same, same, anchors, targets, SoftLabelWeights(), torch.tensor(10.0))
    assert all(abs(float(v)) < 1e-5 for v in losses.values())
    moved = Predictions(cls + 1, deltas + 0.2, same.iou_logits - 1)
    assert all(float(v) > 0 for v in soft_label_loss(moved, same, anchors, targets, SoftLabelWeights(), torch.tensor(10.0)).values())
