"""Co-learning switch and soft-label terms, against direct computations; soft-label
distillation on the student's own assignment (student-train --assign-from student)."""
import json

import pytest
import torch

from lad_cli.assign.colearn import colearn_assign
from lad_cli.assign.paa import (
    CandidateList,
    PAAParams,
    candidate_costs,
    candidates,
    paa_assign,
)
from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.dataset import Collate, DetectionDataset
from lad_cli.data.views import parse_views
from lad_cli.distill.sources import TeacherAssignment
from lad_cli.distill.teacher import Teacher
from lad_cli.losses import SoftLabelWeights, binary_kl_with_logits, soft_label_loss
from lad_cli.model.build import new_detector
from lad_cli.structures import Predictions
from tests.conftest import TINY, invoke
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
        cost = candidate_costs(anchors, c, d, CandidateList.of(cand), targets, PAAParams())
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


def test_soft_label_gradient_is_finite_where_student_and_teacher_tie():
    """bf16 logits tie often; the focal factor's infinite derivative at a tie must not give NaN."""
    anchors, counts, cls, deltas, targets = random_batch(7, n=2, max_gts=4)
    iou = torch.randn(cls.shape[:2])
    student = Predictions(cls.clone().requires_grad_(), deltas.clone().requires_grad_(), iou.clone().requires_grad_())
    teacher = Predictions(torch.cat([cls[:1], cls[1:] + 0.5]), deltas, iou)  # image 0 ties everywhere, image 1 does not
    losses = soft_label_loss(student, teacher, anchors, targets, SoftLabelWeights(cls=10.0), torch.tensor(10.0))
    sum(losses.values()).backward()
    grad = student.cls_logits.grad
    assert torch.isfinite(grad).all() and float(grad[0].abs().max()) == 0.0 and float(grad[1].abs().max()) > 0


def test_own_assignment_source_assigns_with_the_student_and_keeps_the_teachers_outputs(teacher, synth_data):
    online = Teacher(teacher, torch.device("cpu"))
    split = load_split(*locate_split(synth_data, "train"))
    divisor = online.model.config.layout.size_divisor
    dataset = DetectionDataset(split, parse_views("orig,flip", online.checkpoint["size"], online.checkpoint["max_size"]), divisor)
    batch = Collate(divisor)([dataset[(i, 0)] for i in range(4)])
    torch.manual_seed(1)
    student = new_detector("resnet18", len(split.categories), 16, 1, None, online.model.config.layout.octave_base_scale)
    with torch.no_grad():
        outputs = {"student": student(batch.images)}
    anchors, counts = student.anchors(batch.padded_hw, torch.device("cpu"))
    source = TeacherAssignment(online, SoftLabelWeights(cls=10.0), own_assignment=True)
    out = source.assign(batch, outputs, anchors, counts)
    own = paa_assign(anchors, counts, outputs["student"].cls_logits, outputs["student"].box_deltas, batch.targets)
    assert torch.equal(out.matched_idxs, own) and (own >= 0).any()
    assert torch.equal(out.teacher.cls_logits, online.predict(batch.images).cls_logits)
    assert source.box_weighting == "iou" and TeacherAssignment(online, None).box_weighting == "mean"


def test_soft_label_kd_keeps_the_baselines_gt_losses(teacher, synth_data, tmp_path):
    """Same seed and batches: the first iteration's GT losses (computed before any update)
    equal the baseline's, and the soft-label terms come on top."""
    common = ["--data", synth_data, "--split", "val", "--epochs", "1", "--val-split", "", *TINY]
    base = invoke("student-train", "--out", tmp_path / "base", *common)
    assert base.exit_code == 0, base.output
    kd = invoke("student-train", "--teacher", teacher, "--soft-label-weight", "10", "--assign-from", "student",
                "--out", tmp_path / "kd", *common)
    assert kd.exit_code == 0, kd.output
    first = lambda run: json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])
    b, k = first("base"), first("kd")
    for key in ("loss_cls", "loss_box", "loss_iou"):
        assert k[key] == pytest.approx(b[key], abs=1e-5), key
    assert k["loss_kd_cls"] > 0 and k["loss"] == pytest.approx(
        sum(k[x] for x in ("loss_cls", "loss_box", "loss_iou", "loss_kd_cls", "loss_kd_iou", "loss_kd_box")), rel=1e-5)
    assert json.loads((tmp_path / "kd" / "config.json").read_text())["assign_from"] == "student"


@pytest.mark.parametrize("extra, message", [
    (["--assign-from", "student"],
     "--assign-from student needs --teacher and --soft-label-weight (the teacher then gives soft labels only)"),
    (["--teacher", "{teacher}", "--assign-from", "student"],
     "--assign-from student needs --teacher and --soft-label-weight (the teacher then gives soft labels only)"),
    (["--teacher", "{teacher}", "--soft-label-weight", "2", "--assign-from", "peer"],
     "unknown --assign-from 'peer': use teacher, student"),
])
def test_assign_from_refuses_bad_combinations(teacher, synth_data, tmp_path, extra, message):
    args = [str(teacher) if a == "{teacher}" else a for a in extra]
    result = invoke("student-train", "--data", synth_data, "--out", tmp_path / "r", *TINY, *args)
    assert result.exit_code == 2 and result.stderr == f"error: {message}\n", result.output
