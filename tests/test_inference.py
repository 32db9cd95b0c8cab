"""Inference: scores, class-wise NMS, score voting, the 100-detection cap."""
import math

import torch
from torchvision.ops import box_iou

from lad_cli.model.postprocess import InferenceParams, postprocess, score_voting
from lad_cli.structures import Predictions


def test_score_voting_by_hand():
    kept = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [50, 50, 60, 60], [0.0, 0, 10, 12]])
    scores = torch.tensor([0.9, 0.5, 0.8, 0.7])
    labels = torch.tensor([0, 0, 0, 1])  # the last box overlaps but is of another class
    iou = box_iou(kept, boxes)[0]
    w = torch.exp(-((1 - iou) ** 2) / 0.025) * scores
    w[2:] = 0
    expected = (w[:, None] * boxes).sum(0) / w.sum()
    torch.testing.assert_close(score_voting(kept, torch.tensor([0]), boxes, scores, labels, 0.025, 0.01)[0], expected)


def test_postprocess_nms_per_class_and_cap():
    n_anchors = 300
    anchors = torch.tensor([[0.0, 0, 20, 20]]).repeat(n_anchors, 1) + torch.arange(n_anchors)[:, None] * 0.01
    cls = torch.full((1, n_anchors, 2), -10.0)
    cls[0, :, 0] = 3.0  # every anchor scores on class 0: one box after NMS
    cls[0, 0, 1] = 3.0  # anchor 0 also on class 1: survives class-wise NMS
    pred = Predictions(cls, torch.zeros(1, n_anchors, 4), torch.full((1, n_anchors), 3.0))
    det = postprocess(pred, anchors, [n_anchors], [(64, 64)])[0]
    assert sorted(det.labels.tolist()) == [0, 1]
    torch.testing.assert_close(det.scores, torch.full((2,), math.sqrt(torch.sigmoid(torch.tensor(3.0)) ** 2)))
    # Spread-out anchors: many survive NMS, but at most 100 are returned.
    spread = torch.stack([torch.arange(n_anchors) * 30.0, torch.zeros(n_anchors), torch.arange(n_anchors) * 30.0 + 20, torch.full((n_anchors,), 20.0)], 1)
    det = postprocess(pred, spread, [n_anchors], [(64, 100000)], InferenceParams())[0]
    assert len(det.boxes) == 100
