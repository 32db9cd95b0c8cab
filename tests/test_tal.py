"""tal_assign, atss_assign, the TAL soft target and loss: against a per-GT loop written from
the definitions (tests/reference_tal.py) and mmdetection 3.3's own code."""
import pytest
import torch

from lad_cli.assign import tal as tal_module
from lad_cli.assign.atss import atss_assign
from lad_cli.assign.candidates import LevelGrid, rectangle_cells
from lad_cli.assign.registry import ASSIGNERS
from lad_cli.assign.tal import TALParams, alignment_metric, assign_from_alignment, tal_assign, tal_colearn_assign
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


# The grid path (assign/tal_grid.py: the CPU at COCO size) against the dense path it replaces
# there; forced here on small batches.

def dense_tal(anchors, cls, deltas, targets, params=TALParams()):
    metric, iou = alignment_metric(anchors, cls, deltas, targets, params)
    return assign_from_alignment(metric, iou, anchors, targets, params)


@pytest.fixture
def grid_path(monkeypatch):
    monkeypatch.setattr(tal_module, "_DENSE_TRIPLES", 0)


def tied_batch(seed, n=4, max_gts=12):
    """Logits and deltas on a coarse lattice: many anchors share one alignment exactly, also at
    the k-th place; GTs of every size, some smaller than the stride between anchor centres."""
    anchors, counts, cls, deltas, targets = batch(seed, n, max_gts, box_noise=0.15)
    g = torch.Generator().manual_seed(seed)
    cls, deltas = (cls * 2).round() / 2, (deltas * 4).round() / 4
    tiny = torch.rand(n, 1, 2, generator=g) * 200
    boxes = torch.cat([targets.boxes, torch.cat([tiny, tiny + 1.5], -1)], 1)  # no anchor centre inside
    labels = torch.cat([targets.labels, torch.zeros(n, 1, dtype=torch.int64)], 1)
    valid = torch.cat([targets.valid, torch.ones(n, 1, dtype=torch.bool)], 1)
    crowd = torch.tensor([[[0.0, 0, 96, 96]]]).expand(n, 1, 4)
    return anchors, counts, cls, deltas, Targets(boxes, labels, valid, crowd, torch.ones(n, 1, dtype=torch.bool))


@pytest.mark.parametrize("seed", range(8))
def test_grid_path_equals_the_dense_path_with_ties_tiny_gts_and_crowds(seed, grid_path):
    anchors, counts, cls, deltas, targets = tied_batch(seed)
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    assert torch.equal(matched, dense_tal(anchors, cls, deltas, targets))
    assert (matched >= 0).sum() > 20 and (matched == IGNORE).any()


@pytest.mark.parametrize("seed", range(6))
def test_grid_path_matches_the_per_gt_loop_and_mmdetection(seed, grid_path):
    anchors, counts, cls, deltas, targets = batch(seed, box_noise=[0.05, 0.15, 0.5][seed % 3])
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    for i in range(4):
        assert torch.equal(matched[i], reference_tal(anchors, cls[i], deltas[i], *per_image(targets, i)))
        assert torch.equal(matched[i], mmdet_assign(anchors, cls[i], deltas[i], *per_image(targets, i))[0])


def test_grid_path_topk_counts_anchors_outside_the_gt(grid_path):
    # Anchors 0-3 lie outside the GT but their predicted boxes match it best: they fill GT 0's
    # topk 4, so anchor 4, inside, gets nothing (topk before the inside test, as mmdetection).
    anchors = torch.tensor([[100, 100, 120, 120]] * 4 + [[0, 0, 20, 20]], dtype=torch.float32)
    targets = hand_targets([[0, 0, 20, 20]])
    deltas = torch.zeros(1, 5, 4)
    deltas[0, :4, :2] = -100 / 20 / 0.1  # predicted boxes moved onto the GT
    matched = tal_assign(anchors, [4, 1], torch.zeros(1, 5, 1), deltas, targets, TALParams(topk=4))
    assert matched.tolist() == [[-1, -1, -1, -1, -1]]
    assert matched.tolist() == dense_tal(anchors, torch.zeros(1, 5, 1), deltas, targets, TALParams(topk=4)).tolist()
    assert tal_assign(anchors, [4, 1], torch.zeros(1, 5, 1), deltas, targets, TALParams(topk=5)).tolist() == [[-1] * 4 + [0]]


def test_grid_path_non_finite_boxes_rank_as_the_dense_path(grid_path):
    anchors, counts, cls, deltas, targets = batch(2)
    deltas[0, ::97] = torch.nan  # a NaN box has IoU NaN with every GT: topk ranks it first
    deltas[1, ::89, 0] = torch.inf
    deltas[2, ::83, 2] = -torch.inf
    matched = tal_assign(anchors, counts, cls, deltas, targets)
    assert torch.equal(matched, dense_tal(anchors, cls, deltas, targets))


def test_grid_path_zero_and_padded_gts(grid_path):
    anchors, counts, cls, deltas, targets = batch(5, n=3)
    empty = images_of(targets, slice(0, 0))
    one_empty = Targets.from_lists([targets.boxes[0, :0], targets.boxes[1, :3]], [targets.labels[0, :0], targets.labels[1, :3]],
                                   [torch.zeros(0, 4)] * 2)
    matched = tal_assign(anchors, counts, cls[:2], deltas[:2], one_empty)
    assert (matched[0] == BACKGROUND).all() and torch.equal(matched, dense_tal(anchors, cls[:2], deltas[:2], one_empty))
    assert tal_assign(anchors, counts, cls[:0], deltas[:0], empty).shape == (0, len(anchors))


def test_rectangle_cells_hand_written():
    grid = LevelGrid(10, *(torch.arange(4.0) * s for s in (1, 1, 1, 1)))  # 4 x 4 cells from anchor 10
    cells = rectangle_cells(grid, torch.tensor([1, 0, 3]), torch.tensor([2, 0, 1]), torch.tensor([2, 1, 0]),
                            torch.tensor([2, 3, 1]))
    assert cells.slot.tolist() == [0, 0, 0, 0, 2]
    assert cells.anchor.tolist() == [10 + 9, 10 + 10, 10 + 13, 10 + 14, 10 + 3]  # rows 2, 3 x columns 1, 2; (0, 3)
    assert cells.column.tolist() == [0, 1, 0, 1, 2]  # in the slots' concatenated column lists
    assert cells.row.tolist() == [0, 0, 1, 1, 5]  # in the slots' concatenated row lists (slot 1 holds 2..4)
