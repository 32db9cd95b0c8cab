"""tal_assign, atss_assign, the TAL soft target and loss: against a per-GT loop written from
the definitions (tests/reference_tal.py) and mmdetection 3.3's own code."""
import pytest
import torch

from lad_cli.assign.atss import atss_assign
from lad_cli.assign.registry import ASSIGNERS
from lad_cli.assign.tal import TALParams, tal_assign, tal_colearn_assign
from lad_cli.losses import tal_loss, tal_soft_target
from lad_cli.structures import BACKGROUND, IGNORE, Predictions, Targets
from tests.mmdet_reference import load as load_mmdet
from tests.reference_tal import reference_atss, reference_tal
from tests.test_assign import hand_targets, images_of, random_batch

MMDET = load_mmdet()


def batch(seed, n=4, max_gts=8, box_noise=0.15):
    """Predictions of a half-trained detector: boxes near their anchors, so that alignments spread."""
    anchors, counts, cls, deltas, targets = random_batch(seed, n, max_gts)
    return anchors, counts, cls, deltas * box_noise / 0.5, targets


def per_image(targets, i):
    m = int(targets.valid[i].sum())
    return targets.boxes[i, :m], targets.labels[i, :m]


@pytest.mark.parametrize("seed", range(10))
def test_tal_matches_the_per_gt_loop(seed):
    anchors, counts, cls, deltas, targets = batch(seed, box_noise=[0.05, 0.15, 0.5][seed % 3])
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    assert matched.dtype == torch.int64 and matched.shape == (4, len(anchors))
    for i in range(4):
        assert torch.equal(matched[i], reference_tal(anchors, cls[i], deltas[i], *per_image(targets, i)))
    assert (matched >= 0).sum() > 0


@pytest.mark.parametrize("seed", range(6))
def test_atss_matches_the_per_gt_loop(seed):
    anchors, counts, _, _, targets = batch(seed)
    matched = atss_assign(anchors, counts, targets)
    for i in range(4):
        assert torch.equal(matched[i], reference_atss(anchors, counts, per_image(targets, i)[0]))


def test_batched_equals_one_image_at_a_time():
    anchors, counts, cls, deltas, targets = batch(11, n=3)
    together = tal_assign(anchors, counts, cls, deltas, targets)
    for i in range(3):
        alone = tal_assign(anchors, counts, cls[i:i + 1], deltas[i:i + 1], images_of(targets, slice(i, i + 1)))
        assert torch.equal(together[i:i + 1], alone)


def test_hundred_gts_in_one_image():
    anchors, counts, cls, deltas, _ = batch(1, n=1, max_gts=0)
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(100, 2, generator=g) * 220
    boxes = torch.cat([xy, xy + 8 + torch.rand(100, 2, generator=g) * 30], 1).clamp(max=255)
    labels = torch.randint(0, 5, (100,), generator=g)
    targets = Targets.from_lists([boxes], [labels], [torch.zeros(0, 4)])
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    assert torch.equal(matched[0], reference_tal(anchors, cls[0], deltas[0], boxes, labels))
    assert len(matched[matched >= 0].unique()) > 50  # many GTs compete for the same anchors
    assert torch.equal(atss_assign(anchors, counts, targets)[0], reference_atss(anchors, counts, boxes))


def test_zero_gts_and_crowd_regions():
    anchors, counts, cls, deltas, _ = batch(0, n=2, max_gts=0)
    empty = Targets.from_lists([torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2, [torch.zeros(0, 4)] * 2)
    assert (tal_assign(anchors, counts, cls, deltas, empty) == BACKGROUND).all()
    assert (atss_assign(anchors, counts, empty) == BACKGROUND).all()
    crowd = Targets(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool),
                    torch.tensor([[[0.0, 0, 128, 128]], [[0.0, 0, 0, 0]]]), torch.tensor([[True], [False]]))
    got = tal_assign(anchors, counts, cls, deltas, crowd)
    inside = (anchors[:, :2] >= 0).all(1) & (anchors[:, 2:] <= 128).all(1)
    assert (got[0, inside] == IGNORE).all() and (got[1] == BACKGROUND).all()


def test_ties_gt_without_inside_anchor_and_double_claims():
    # Four identical anchors on one spot and equal predictions: equal alignment, the topk
    # keeps the lower indices. topk 2 of them for GT0. GT1 is a 1-px box between anchor
    # centres: no centre inside, no positive. GT2 = GT0 shifted: it claims the same anchors
    # with a lower IoU and loses them; GT3 is GT0 again: same IoU, the lower GT index wins.
    anchors = torch.tensor([[0, 0, 20, 20]] * 4 + [[40, 40, 60, 60]], dtype=torch.float32)
    targets = hand_targets([[0, 0, 20, 20], [30, 30, 31, 31], [1, 1, 21, 21], [0, 0, 20, 20]], [0, 0, 0, 0])
    cls, deltas = torch.zeros(1, 5, 1), torch.zeros(1, 5, 4)
    matched = tal_assign(anchors, [5], cls, deltas, targets, TALParams(topk=2))
    assert matched.tolist() == [[0, 0, -1, -1, -1]]


def test_colearning_with_itself_is_plain_tal():
    anchors, counts, cls, deltas, targets = batch(3)
    pred = Predictions(cls, deltas, torch.zeros(cls.shape[:2]))
    other = Predictions(cls.flip(1), deltas.flip(1), torch.zeros(cls.shape[:2]))
    for rule in ("gt-level", "iteration"):
        matched, share = tal_colearn_assign(anchors, counts, pred, pred, targets, rule)
        assert torch.equal(matched, tal_assign(anchors, counts, cls, deltas, targets)) and share == 1
        matched, share = tal_colearn_assign(anchors, counts, pred, other, targets, rule)
        assert 0 <= share <= 1 and (matched >= 0).any()


def test_soft_target_normalises_per_gt():
    from lad_cli.model import coder
    from lad_cli.model.boxes import aligned_iou
    anchors, counts, cls, deltas, targets = batch(4)
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    soft = tal_soft_target(anchors, cls, deltas, matched, targets, 1, 6)
    assert (soft[matched < 0] == 0).all() and (soft[matched >= 0] > 0).all()
    for i in range(matched.shape[0]):
        for g in matched[i][matched[i] >= 0].unique().tolist():
            pos = matched[i] == g
            iou = aligned_iou(coder.decode(anchors[pos], deltas[i, pos]), targets.boxes[i, g].expand(int(pos.sum()), 4))
            t = cls[i, pos, targets.labels[i, g]].sigmoid() * iou ** 6
            torch.testing.assert_close(soft[i, pos], t / (t.max() + 1e-7) * iou.max())


def mmdet_assign(anchors, cls, deltas, boxes, labels):
    from lad_cli.model import coder
    pred = MMDET.InstanceData(priors=anchors, scores=cls.sigmoid(), bboxes=coder.decode(anchors, deltas))
    result = MMDET.tal.assign(pred, MMDET.InstanceData(bboxes=boxes, labels=labels), alpha=1, beta=6)
    return result.gt_inds - 1, result


@pytest.mark.parametrize("seed", range(6))
def test_tal_and_soft_target_match_mmdetection(seed):
    anchors, counts, cls, deltas, targets = batch(seed, box_noise=[0.05, 0.15, 0.5][seed % 3])
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    soft = tal_soft_target(anchors, cls, deltas, matched, targets, 1, 6)
    for i in range(4):
        boxes, labels = per_image(targets, i)
        theirs, result = mmdet_assign(anchors, cls[i], deltas[i], boxes, labels)
        assert torch.equal(matched[i], theirs)
        # TOOD head's normalisation (tood_head._get_targets_single), GT by GT
        expected = torch.zeros(len(anchors))
        for g in theirs[theirs >= 0].unique():
            pos = theirs == g
            expected[pos] = result.assign_metrics[pos] / (result.assign_metrics[pos].max() + 10e-8) * result.max_overlaps[pos].max()
        torch.testing.assert_close(soft[i], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_atss_matches_mmdetection(seed):
    anchors, counts, _, _, targets = batch(seed)
    matched = atss_assign(anchors, counts, targets)
    for i in range(4):
        boxes, labels = per_image(targets, i)
        result = MMDET.atss.assign(MMDET.InstanceData(priors=anchors), counts, MMDET.InstanceData(bboxes=boxes, labels=labels))
        assert torch.equal(matched[i], result.gt_inds - 1)


def test_tal_loss_classification_term_is_mmdetections_qfl():
    anchors, counts, cls, deltas, targets = batch(6)
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    soft = tal_soft_target(anchors, cls, deltas, matched, targets, 1, 6)
    ours = tal_loss(cls, deltas, torch.zeros(cls.shape[:2]), anchors, matched, targets, soft)
    gt = matched.clamp(min=0)
    label = torch.where(matched >= 0, torch.gather(targets.labels, 1, gt), cls.shape[-1])  # mmdet: background = C
    theirs = MMDET.qfl(cls.reshape(-1, cls.shape[-1]), (label.reshape(-1), soft.reshape(-1)), reduction="sum")
    assert ours["loss_cls"].item() == pytest.approx(theirs.item() / max(1.0, soft.sum().item()), rel=1e-5)


def test_tal_head_loss_trains_on_own_alignment_and_is_finite():
    anchors, counts, cls, deltas, targets = batch(8)
    cls.requires_grad_(True)
    pred = Predictions(cls, deltas, torch.zeros(cls.shape[:2]))
    tal = ASSIGNERS["tal"]
    matched = tal.assign(anchors, counts, pred, targets)
    own = tal.loss(pred, anchors, matched, targets, None, lambda t: t)
    given = tal.loss(pred, anchors, matched, targets, None, lambda t: t, tal.soft_target(anchors, pred, matched, targets))
    assert all(torch.equal(own[k], given[k]) for k in own)  # no soft target given = the network's own
    sum(own.values()).backward()
    assert torch.isfinite(cls.grad).all() and cls.grad.abs().sum() > 0
