"""paa_assign and the batched mixture fit against sklearn and the per-GT reference loop."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torchvision.ops import sigmoid_focal_loss

from lad_cli.assign import gmm
from lad_cli.assign.candidates import _dense_candidates, _grid_candidates, level_grids
from lad_cli.assign.gmm import fit_two_gaussians, split_low_component
from lad_cli.assign.paa import PAAParams, candidates, class_cost, paa_assign
from lad_cli.model.anchors import AnchorLayout
from lad_cli.structures import BACKGROUND, IGNORE, Targets
from tests.reference_paa import reference_assign

warnings.filterwarnings("ignore", category=ConvergenceWarning)


def sklearn_fit(x: np.ndarray):
    gmm = GaussianMixture(2, weights_init=np.array([0.5, 0.5]), means_init=np.array([x.min(), x.max()]).reshape(2, 1),
                          precisions_init=np.ones((2, 1)), covariance_type="diag")
    gmm.fit(x.reshape(-1, 1))
    low = gmm.predict(x.reshape(-1, 1)) == 0
    positive = np.zeros(len(x), bool)
    if low.any():
        positive[np.nonzero(low)[0][: int(np.argmax(gmm.score_samples(x.reshape(-1, 1))[low])) + 1]] = True
    return gmm, positive


def random_costs(rng, rows, k=45):
    costs = np.full((rows, k), np.inf, np.float32)
    for r in range(rows):
        n = int(rng.integers(5, k + 1))
        x = [rng.gamma(2.0, 0.5, n), np.r_[rng.normal(0.4, 0.1, n // 3), rng.normal(2.0, 0.5, n - n // 3)],
             rng.uniform(0, 3, n)][r % 3]
        costs[r, :n] = np.sort(x.astype(np.float32))
    return costs


def test_mixture_matches_sklearn():
    rng = np.random.default_rng(0)
    costs = random_costs(rng, 300)
    valid = np.isfinite(costs)
    mix = fit_two_gaussians(torch.from_numpy(costs), torch.from_numpy(valid))
    ours = split_low_component(torch.from_numpy(costs), torch.from_numpy(valid), mix).numpy()
    for r in range(len(costs)):
        x = costs[r, valid[r]]
        gmm, positive = sklearn_fit(x)
        np.testing.assert_allclose(mix.weights[r].numpy(), gmm.weights_, rtol=1e-3)
        np.testing.assert_allclose(mix.means[r].numpy(), gmm.means_[:, 0], rtol=1e-3)
        np.testing.assert_allclose(mix.variances[r].numpy(), gmm.covariances_[:, 0], rtol=1e-3)
        assert int(mix.iterations[r]) == gmm.n_iter_
        np.testing.assert_array_equal(ours[r, : len(x)], positive)


def mmdetection_cut(x: np.ndarray) -> np.ndarray:
    """Positives of mmdetection 3.3's PAAHead.gmm_separation_scheme on sklearn's fit, as we
    read it: the low component's candidates up to the index torch.topk(1) picks among their
    log-likelihoods (among equal ones, the kernel decides which)."""
    gmm, _ = sklearn_fit(x)
    low = gmm.predict(x.reshape(-1, 1)) == 0
    positive = np.zeros(len(x), bool)
    if low.any():
        cut = int(torch.from_numpy(gmm.score_samples(x.reshape(-1, 1))[low]).topk(1).indices)
        positive[np.nonzero(low)[0][: cut + 1]] = True
    return positive


@pytest.mark.parametrize("costs, expected", [
    # three tied at the low component's mean: the cut after the first would keep 2 of these 4
    ([0.45, 0.5, 0.5, 0.5, 0.55, 3.0, 3.1, 3.2, 3.3], [1, 1, 1, 1, 0, 0, 0, 0, 0]),
    # constant predictions on five identical anchors: every cost equal
    ([0.7] * 5, [1] * 5),
    # a tie before the cut and one among the negatives
    ([0.2, 0.2, 0.4, 0.5, 0.6, 2.0, 2.0, 2.5], None),
])
def test_equal_costs_at_the_cut_get_equal_decisions(costs, expected):
    x = np.array(costs, np.float32)
    c, v = torch.from_numpy(x)[None], torch.ones(1, len(x), dtype=torch.bool)
    ours = split_low_component(c, v, fit_two_gaussians(c, v))[0].numpy()
    for value in np.unique(x):
        assert len(set(ours[x == value])) == 1, (value, ours)
    if expected is not None:
        np.testing.assert_array_equal(ours, np.array(expected, bool))
    # mmdetection's positives are ours but for the rest of a tie at its cut (which topk splits)
    theirs = mmdetection_cut(x)
    assert (ours >= theirs).all()
    assert np.isin(x[ours & ~theirs], x[theirs][-1:]).all()


def test_mixture_is_defined_where_sklearn_fails():
    # Near-equal costs: float32 rounding drives a variance negative and sklearn raises
    # "ill-defined empirical covariance" (the reference's known crash on small data).
    x = np.array([1, 1, 1, 1, 1, 1.0001], np.float32) * 1e3
    with pytest.raises(ValueError):
        sklearn_fit(x)
    costs = torch.from_numpy(x)[None]
    mix = fit_two_gaussians(costs, torch.ones_like(costs, dtype=torch.bool))
    assert torch.isfinite(mix.means).all() and (mix.variances > 0).all()
    assert split_low_component(costs, torch.ones_like(costs, dtype=torch.bool), mix).any()


def hand_targets(boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(1, -1, 4)
    m = boxes.shape[1]
    labels = torch.zeros(1, m, dtype=torch.int64) if labels is None else torch.tensor([labels])
    return Targets(boxes, labels, torch.ones(1, m, dtype=torch.bool), torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool))


def test_candidates_hand_written_matrix_with_ties():
    anchors = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 0, 30, 10], [100, 100, 110, 110],
                            [38, 38, 48, 48], [40, 40, 50, 50]], dtype=torch.float32)
    gts = hand_targets([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10], [40, 40, 42, 42]])
    # IoU rows (GT x anchor):  a0    a1    a2  a3  a4    a5
    #   GT0                    1    1/3    0   0   0     0
    #   GT1                    0     0     1   0   0     0
    #   GT2 (= GT0)            1    1/3    0   0   0     0
    #   GT3 (4 px^2)           0     0     0   0  .04   .04
    # a0 is the best anchor of GT0 and GT2: the later GT wins. a1 ties GT0/GT2 at 1/3 >= 0.1:
    # max-IoU matching keeps the first. GT3 is below 0.1 everywhere but takes both anchors
    # tied at its best IoU. a3 overlaps nothing.
    assert candidates(anchors, gts, PAAParams()).tolist() == [[2, 0, 1, -1, 3, 3]]


def images_of(targets: Targets, index: slice) -> Targets:
    """The GT of some images of a batch."""
    return Targets(*(t[index] for t in vars(targets).values()))


def random_batch(seed, n, max_gts, hw=(256, 256), num_classes=5):
    g = torch.Generator().manual_seed(seed)
    layout = AnchorLayout()
    anchors, counts = layout.anchors(hw), layout.num_per_level(hw)
    boxes, labels = [], []
    for _ in range(n):
        m = int(torch.randint(0, max_gts + 1, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 200
        wh = 8 + torch.rand(m, 2, generator=g) * 120
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=255)], 1))
        labels.append(torch.randint(0, num_classes, (m,), generator=g))
    targets = Targets.from_lists(boxes, labels, [torch.zeros(0, 4)] * n)
    cls = torch.randn(n, anchors.shape[0], num_classes, generator=g) - 2
    deltas = torch.randn(n, anchors.shape[0], 4, generator=g) * 0.5
    return anchors, counts, cls, deltas, targets


@pytest.mark.parametrize("seed", range(4))
def test_paa_assign_matches_per_gt_sklearn_reference(seed):
    anchors, counts, cls, deltas, targets = random_batch(seed, n=4, max_gts=8)
    matched = paa_assign(anchors, counts, cls, deltas, targets)
    assert matched.dtype == torch.int64 and matched.shape == (4, anchors.shape[0])
    assert (matched >= 0).any()
    for i in range(4):
        m = int(targets.valid[i].sum())
        ref = reference_assign(anchors, counts, cls[i], deltas[i], targets.boxes[i, :m], targets.labels[i, :m])
        assert torch.equal(matched[i], ref)


def test_batched_equals_one_image_at_a_time():
    anchors, counts, cls, deltas, targets = random_batch(7, n=3, max_gts=6)
    batched = paa_assign(anchors, counts, cls, deltas, targets)
    for i in range(3):
        alone = paa_assign(anchors, counts, cls[i:i + 1], deltas[i:i + 1], images_of(targets, slice(i, i + 1)))
        assert torch.equal(batched[i:i + 1], alone)


def test_hundred_gts_in_one_image():
    anchors, counts, cls, deltas, _ = random_batch(1, n=1, max_gts=0)
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(100, 2, generator=g) * 220
    boxes = torch.cat([xy, xy + 8 + torch.rand(100, 2, generator=g) * 30], 1).clamp(max=255)
    labels = torch.randint(0, 5, (100,), generator=g)
    targets = Targets.from_lists([boxes], [labels], [torch.zeros(0, 4)])
    matched = paa_assign(anchors, counts, cls, deltas, targets)
    assert torch.equal(matched[0], reference_assign(anchors, counts, cls[0], deltas[0], boxes, labels))
    assert len(matched[matched >= 0].unique()) > 50


def test_no_gt_gives_all_background():
    anchors, counts, cls, deltas, _ = random_batch(0, n=2, max_gts=0)
    empty = Targets.from_lists([torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2, [torch.zeros(0, 4)] * 2)
    assert (paa_assign(anchors, counts, cls, deltas, empty) == BACKGROUND).all()


def test_one_candidate_no_candidate_and_equal_costs():
    # Level 0: three anchors. GT0 overlaps only a0 (one candidate: no mixture, no positive);
    # GT1 overlaps nothing; GT2 has five identical anchors (a3..a7): equal costs.
    anchors = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [80, 0, 90, 10]] + [[20, 20, 40, 40]] * 5, dtype=torch.float32)
    targets = hand_targets([[0, 0, 9, 9], [200, 200, 210, 210], [21, 21, 39, 39]], [0, 1, 2])
    cls = torch.zeros(1, 8, 3)
    deltas = torch.zeros(1, 8, 4)
    matched = paa_assign(anchors, [8], cls, deltas, targets)
    # Equal costs: one component takes everything, and equal costs get equal decisions.
    assert matched.tolist() == [[-1, -1, -1, 2, 2, 2, 2, 2]]


def test_crowd_regions_ignore_their_background_anchors():
    anchors = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [40, 40, 50, 50], [60, 60, 70, 70]], dtype=torch.float32)
    targets = Targets(torch.tensor([[[0.0, 0, 10, 10]]]), torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool),
                      torch.tensor([[[38.0, 38, 52, 52]]]), torch.ones(1, 1, dtype=torch.bool))
    matched = paa_assign(anchors, [4], torch.zeros(1, 4, 2), torch.zeros(1, 4, 4), targets)
    assert matched[0, 2] == IGNORE and matched[0, 3] == BACKGROUND and (matched[0, :2] >= 0).any()


def test_class_cost_is_torchvisions_focal_loss_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for scale, shift in ((1.0, -4.0), (6.0, 0.0), (30.0, 0.0)):
        logits = torch.randn(700, 80, generator=g) * scale + shift
        logits[0, :6] = torch.tensor([0.0, -100.0, 100.0, 1e-8, -17.0, 17.0])
        labels = torch.randint(0, 80, (700,), generator=g)
        onehot = torch.nn.functional.one_hot(labels, 80).float()
        assert torch.equal(class_cost(logits, labels, 0.25, 2.0), sigmoid_focal_loss(logits, onehot, 0.25, 2.0).sum(-1))


def grid_batch(seed: int, n: int, max_gts: int, hw=(256, 384)):
    """Boxes of every kind for the grid search: inside, overrunning the image, tiny, huge,
    exact copies of anchors (IoU ties), duplicated GTs."""
    g = torch.Generator().manual_seed(seed)
    layout = AnchorLayout(octave_base_scale=4)
    anchors = layout.anchors(hw)
    boxes = []
    for _ in range(n):
        m = int(torch.randint(0, max_gts + 1, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * torch.tensor([hw[1], hw[0]]) * 1.2 - 20
        wh = torch.exp(torch.rand(m, 2, generator=g) * 6)  # 1 to 400 px
        b = torch.cat([xy, xy + wh], 1)
        if m >= 4:
            b[0] = anchors[int(torch.randint(0, len(anchors), (1,), generator=g))]
            b[1] = b[0]
            b[2] = anchors[-1]
        boxes.append(b)
    labels = [torch.zeros(len(b), dtype=torch.int64) for b in boxes]
    return anchors, Targets.from_lists(boxes, labels, [torch.zeros(0, 4)] * n)


@pytest.mark.parametrize("seed", range(6))
def test_grid_search_finds_what_the_dense_matrix_finds(seed):
    anchors, targets = grid_batch(seed, n=4, max_gts=40 if seed < 5 else 100)
    grids = level_grids(anchors)
    assert grids is not None  # the layout's anchors are a grid
    dense = _dense_candidates(anchors, targets, 0.1)
    assert torch.equal(_grid_candidates(anchors, grids, targets, 0.1), dense) and (dense >= 0).any()


def test_anchors_that_are_no_grid_take_the_dense_search():
    anchors = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 0, 30, 10], [100, 100, 110, 110]], dtype=torch.float32)
    assert level_grids(anchors) is None
    anchors, _ = grid_batch(0, n=1, max_gts=0)
    shuffled = anchors[torch.randperm(len(anchors), generator=torch.Generator().manual_seed(0))]
    assert level_grids(shuffled) is None


def test_em_block_schedule_does_not_change_the_fit(monkeypatch):
    """CUDA's doubling blocks (fewer host syncs) and the CPU's blocks of 4 give the same fit."""
    costs = torch.from_numpy(random_costs(np.random.default_rng(3), 200))
    valid = torch.isfinite(costs)
    cpu = fit_two_gaussians(costs, valid)
    monkeypatch.setattr(gmm, "_doubling_blocks", lambda device: True)
    doubling = fit_two_gaussians(costs, valid)
    for name in ("weights", "means", "variances", "iterations"):
        assert torch.equal(getattr(cpu, name), getattr(doubling, name)), name
