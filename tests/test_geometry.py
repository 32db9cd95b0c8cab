"""Boxes, box coder, anchors and losses against torchvision's ops and hand computations."""
import math

import torch
from torchvision.ops import box_iou, generalized_box_iou, sigmoid_focal_loss

from lad_cli.losses import LossWeights, detection_loss
from lad_cli.model import coder
from lad_cli.model.anchors import AnchorLayout
from lad_cli.model.boxes import aligned_iou, pairwise_iof, pairwise_iou
from lad_cli.structures import Targets


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 60], 1)


def test_iou_matches_torchvision():
    a, b = random_boxes(30, 0), random_boxes(40, 1)
    torch.testing.assert_close(pairwise_iou(a, b), box_iou(a, b))
    torch.testing.assert_close(pairwise_iou(a[None], b[None])[0], box_iou(a, b))
    torch.testing.assert_close(aligned_iou(a, b[:30]), box_iou(a, b[:30]).diagonal())


def test_iof_is_fraction_of_box_inside_region():
    region = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 5, 5], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert pairwise_iof(region, boxes).tolist() == [[1.0, 0.5, 0.0]]


def encode(anchors, boxes):
    """The inverse of `coder.decode` (the losses need none: they compare decoded boxes)."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    dx = (boxes[..., 0] + 0.5 * bw - anchors[..., 0] - 0.5 * aw) / aw
    dy = (boxes[..., 1] + 0.5 * bh - anchors[..., 1] - 0.5 * ah) / ah
    sx, sy, sw, sh = coder.STDS
    return torch.stack([dx / sx, dy / sy, torch.log(bw / aw) / sw, torch.log(bh / ah) / sh], dim=-1)


def test_coder_round_trip_and_reference_values():
    anchors, boxes = random_boxes(50, 2), random_boxes(50, 3)
    torch.testing.assert_close(coder.decode(anchors, encode(anchors, boxes)), boxes, rtol=1e-5, atol=1e-4)
    # Hand-computed: a box twice as wide, shifted by half the anchor's width.
    deltas = encode(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[-5.0, 0, 15, 10]]))
    torch.testing.assert_close(deltas, torch.tensor([[0.0, 0.0, math.log(2) / 0.2, 0.0]]))


def test_anchor_layout_sizes_and_flip_permutation():
    layout = AnchorLayout()
    hw = (256, 384)
    anchors = layout.anchors(hw)
    assert layout.num_per_level(hw) == [32 * 48, 16 * 24, 8 * 12, 4 * 6, 2 * 3] and len(anchors) == sum(layout.num_per_level(hw))
    assert torch.equal(anchors[0], torch.tensor([4.0 - 32, 4 - 32, 4 + 32, 4 + 32]))  # centre (0.5 x 8), side 8 x 8
    # Mirroring the padded canvas maps the anchor set onto itself: an exact index permutation.
    mirrored = torch.stack([hw[1] - anchors[:, 2], anchors[:, 1], hw[1] - anchors[:, 0], anchors[:, 3]], 1)
    match = pairwise_iou(mirrored, anchors).argmax(1)
    assert torch.equal(anchors[match], mirrored) and len(match.unique()) == len(anchors)


def test_losses_against_torchvision_and_by_hand():
    anchors = torch.tensor([[0.0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32]])
    cls = torch.tensor([[[2.0, -1.0], [-3.0, 0.5], [0.0, 0.0]]])
    deltas = torch.zeros(1, 3, 4)
    iou_logits = torch.tensor([[0.3, -0.2, 0.0]])
    targets = Targets.from_lists([torch.tensor([[0.0, 0, 16, 8]])], [torch.tensor([1])], [torch.zeros(0, 4)])
    matched = torch.tensor([[0, -1, -2]])  # positive, background, ignored
    losses = detection_loss(cls, deltas, iou_logits, anchors, matched, targets)
    cls_target = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    expected_cls = sigmoid_focal_loss(cls[0, :2], cls_target, 0.25, 2.0).sum() / 1  # max(1 positive, 1 image)
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    iou = 0.5  # the anchor box against the half-height GT
    giou = generalized_box_iou(anchors[:1], targets.boxes[0, :1])[0, 0]
    torch.testing.assert_close(losses["loss_box"], 1.3 * (1 - giou))  # one positive: IoU weight cancels
    bce = -(iou * math.log(torch.sigmoid(torch.tensor(0.3))) + (1 - iou) * math.log(1 - torch.sigmoid(torch.tensor(0.3))))
    torch.testing.assert_close(losses["loss_iou"], torch.tensor(0.5 * bce, dtype=torch.float32))


def test_box_weighting_iou_vs_mean():
    anchors = torch.tensor([[0.0, 0, 16, 16], [0, 0, 32, 32]])
    targets = Targets.from_lists([torch.tensor([[0.0, 0, 16, 16]])], [torch.tensor([0])], [torch.zeros(0, 4)])
    args = (torch.zeros(1, 2, 1), torch.zeros(1, 2, 4), torch.zeros(1, 2), anchors, torch.tensor([[0, 0]]), targets)
    giou = 1 - generalized_box_iou(anchors, targets.boxes[0])[:, 0]
    ious = torch.tensor([1.0, 0.25])
    by_iou = detection_loss(*args, weights=LossWeights(box_weighting="iou"))["loss_box"]
    by_mean = detection_loss(*args, weights=LossWeights(box_weighting="mean"))["loss_box"]
    torch.testing.assert_close(by_iou, 1.3 * (giou * ious).sum() / ious.sum())
    torch.testing.assert_close(by_mean, 1.3 * giou.mean())


def test_giou_loss_is_torchvisions_bit_for_bit_with_its_gradients():
    from torchvision.ops import generalized_box_iou_loss

    from lad_cli.losses import giou_loss

    a, b = random_boxes(400, 1), random_boxes(400, 2)
    b[:50] = a[:50]  # identical boxes
    b[50:100, [0, 2]] += 500  # disjoint boxes
    a.requires_grad_(True)
    ours, theirs = giou_loss(a, b), generalized_box_iou_loss(a, b, reduction="none")
    assert torch.equal(ours, theirs)
    (g_ours,), (g_theirs,) = torch.autograd.grad(ours.sum(), a), torch.autograd.grad(theirs.sum(), a)
    assert torch.equal(g_ours, g_theirs)
