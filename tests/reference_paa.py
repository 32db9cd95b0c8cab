"""The reference way to assign: one image at a time, a Python loop over GTs, one sklearn
GaussianMixture per GT, as mmdetection's PAAHead.paa_reassign does. Used by the tests
and by assign_speed.py to check and time the batched `paa_assign` against it."""
import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from lad_cli.model import coder


def reference_assign(anchors, num_per_level, cls_logits, box_deltas, gt_boxes, gt_labels, topk=9):
    """One image: anchors (A, 4), cls_logits (A, C), box_deltas (A, 4), gt_boxes (M, 4),
    gt_labels (M,) -> (A,) int64 GT index or -1. Ties are broken by the lower anchor index."""
    num_anchors, num_gts = anchors.shape[0], gt_boxes.shape[0]
    matched = torch.full((num_anchors,), -1, dtype=torch.int64)
    if num_gts == 0:
        return matched
    iou = box_iou(gt_boxes, anchors)  # (M, A)
    best_iou, best_gt = iou.max(0)
    cand = torch.where(best_iou >= 0.1, best_gt, -1)
    for g in range(num_gts):  # low-quality matches, a later GT overriding an earlier one
        if iou[g].max() > 0:
            cand[iou[g] == iou[g].max()] = g
    level = torch.repeat_interleave(torch.arange(len(num_per_level)), torch.tensor(num_per_level))
    for g in range(num_gts):
        pooled_idx, pooled_cost = [], []
        for lvl in range(len(num_per_level)):
            idx = torch.nonzero((cand == g) & (level == lvl)).flatten()
            if len(idx) == 0:
                continue
            target = torch.nn.functional.one_hot(gt_labels[g], cls_logits.shape[1]).float().expand(len(idx), -1)
            cost = sigmoid_focal_loss(cls_logits[idx].float(), target).sum(-1) + 1.3 * generalized_box_iou_loss(
                coder.decode(anchors[idx], box_deltas[idx].float()), gt_boxes[g].expand(len(idx), -1), reduction="none")
            order = torch.sort(cost, stable=True).indices[:topk]
            pooled_idx.append(idx[order])
            pooled_cost.append(cost[order])
        if sum(len(i) for i in pooled_idx) < 2:
            continue
        costs, order = torch.sort(torch.cat(pooled_cost), stable=True)
        idx = torch.cat(pooled_idx)[order]
        x = costs.numpy().astype(np.float32).reshape(-1, 1)
        gmm = GaussianMixture(2, weights_init=np.array([0.5, 0.5]), means_init=np.array([x.min(), x.max()]).reshape(2, 1),
                              precisions_init=np.ones((2, 1)), covariance_type="diag")
        try:
            gmm.fit(x)
        except ValueError:  # sklearn's "ill-defined empirical covariance": the reference crashes here
            continue
        low = gmm.predict(x) == 0
        if low.any():
            cut = int(np.argmax(gmm.score_samples(x)[low]))
            matched[idx[torch.from_numpy(np.nonzero(low)[0][: cut + 1])]] = g
    return matched
