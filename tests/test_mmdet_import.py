"""`lad import` of mmdetection PAA checkpoints: parity with mmdetection 3.3's own PAA (built
from its config, random weights, saved as its runner saves), the refusal of other
architectures, and the zoo path end to end (import, eval, assign --cache, student-train).

mmdetection is a test dependency (pyproject's `test` extra): these tests do not skip."""
import json
import os

import pytest
import torch

from lad_cli.engine.zoo import COCO_CATEGORIES
from lad_cli.model import coder
from lad_cli.model.build import load_detector
from lad_cli.model.postprocess import InferenceParams, postprocess
from tests.conftest import invoke
from tests.mmdet_reference import import_mmdet


def _mmdet():
    mmdet = import_mmdet()
    from mmdet.registry import MODELS
    from mmengine.config import Config
    return mmdet, MODELS, Config


def build_mmdet_paa(seed: int = 0, **changes):
    """mmdetection 3.3's PAA from its own config (`changes`: backbone/head fields), with random
    weights, BatchNorm statistics and scales; (model in eval mode, config)."""
    mmdet, models, config = _mmdet()
    cfg = config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim/configs/paa/paa_r50_fpn_1x_coco.py"))
    cfg.model.backbone.init_cfg = None  # no torchvision download
    for path, value in changes.items():
        node, *keys = path.split(".")
        target = cfg.model[node]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    torch.manual_seed(seed)
    model = models.build(cfg.model).eval()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.uniform_(0.5, 2.0)
            elif value.dim() == 4:
                value.normal_(0, (2.0 / value[0].numel()) ** 0.5)
            else:
                value.normal_(0, 0.2)
        model.bbox_head.atss_cls.bias.add_(-3.0)  # few scores above the threshold, as a trained head
    return model, cfg


def save_as_mmdet(model, cfg, path, classes=None, **extra):
    """The file mmengine's runner writes (meta with the config, dataset classes, versions)."""
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
    meta = {"epoch": 12, "iter": 90000, "cfg": cfg.pretty_text, "seed": 0, "experiment_name": "paa_r50_fpn_1x_coco",
            "time": "20240101_000000", "mmengine_version": "0.10.7",
            "dataset_meta": {"classes": tuple(classes or [c["name"] for c in COCO_CATEGORIES]),
                             "palette": [(220, 20, 60)] * len(classes or COCO_CATEGORIES)}}
    save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(model.state_dict()), **extra}, str(path))
    return path


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """mmdetection's R50 PAA (random weights), its mmengine file and its lad import."""
    model, cfg = build_mmdet_paa()
    folder = tmp_path_factory.mktemp("r50")
    source = save_as_mmdet(model, cfg, folder / "paa_r50_fpn_1x_coco.pth")
    result = invoke("import", source, "--out", folder / "paa_r50.pt")
    assert result.exit_code == 0, result.output
    lad, ckpt = load_detector(folder / "paa_r50.pt")
    return model, lad.eval(), ckpt, source


SIZES = [(128, 256), (256, 128)]  # two padded input sizes, batch 2


@pytest.fixture(scope="module")
def outputs(r50):
    """Per size: the normalised input, mmdetection's head outputs (per level) and lad's."""
    model, lad, _, _ = r50
    found = {}
    with torch.no_grad():
        for i, hw in enumerate(SIZES):
            x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(i))
            found[hw] = x, model.bbox_head(model.extract_feat(x)), lad(x)
    return found


def _flat(outputs, channels: int) -> torch.Tensor:
    return torch.cat([o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, channels) for o in outputs], 1)


@pytest.mark.parametrize("hw", SIZES)
def test_imported_network_matches_mmdetection_level_by_level(r50, outputs, hw):
    """Same normalised inputs: every level's class logits, box deltas and IoU logits, and the
    boxes decoded on each side's own anchors, agree to 1e-4."""
    model, lad, _, _ = r50
    _, (cls, reg, iou), ours = outputs[hw]
    priors = model.bbox_head.prior_generator.grid_priors([f.shape[-2:] for f in cls], device="cpu")
    anchors, counts = lad.anchors(hw, torch.device("cpu"))
    theirs = {"class logits": (_flat(cls, 80), ours.cls_logits), "box deltas": (_flat(reg, 4), ours.box_deltas),
              "IoU logits": (_flat(iou, 1)[..., 0], ours.iou_logits)}
    starts = [sum(counts[:i]) for i in range(len(counts) + 1)]
    for level, (a, b) in enumerate(zip(starts, starts[1:])):
        for name, (t, o) in theirs.items():
            diff = (t[:, a:b] - o[:, a:b]).abs().max().item()
            assert diff <= 1e-4, f"P{level + 3} {name}: {diff}"
        assert torch.equal(priors[level], anchors[a:b]), f"P{level + 3} anchors"
        deltas = theirs["box deltas"][0][:, a:b]
        mm_boxes = model.bbox_head.bbox_coder.decode(priors[level].expand(2, -1, -1), deltas)
        diff = (mm_boxes - coder.decode(anchors[a:b], ours.box_deltas[:, a:b])).abs().max().item()
        assert diff <= 1e-4, f"P{level + 3} decoded boxes: {diff}"


def test_imported_inference_matches_mmdetection_predict(r50, outputs):
    """The whole inference (per-level top-k, sqrt(class x IoU) scores, clipping, class-wise
    NMS, score voting, the cap) of lad's `postprocess` against mmdetection's
    `predict_by_feat`, with NMS by torchvision in place of mmcv's compiled op."""
    model, lad, _, _ = r50
    hw = SIZES[0]
    _, (cls, reg, iou), ours = outputs[hw]
    image_hw = [(120, 250), (128, 200)]  # inside the padded input: boxes are clipped to these
    metas = [{"img_shape": size, "scale_factor": (1.0, 1.0)} for size in image_hw]
    with torch.no_grad():
        theirs = model.bbox_head.predict_by_feat(cls, reg, iou, batch_img_metas=metas, cfg=model.bbox_head.test_cfg,
                                                 rescale=False)
    anchors, counts = lad.anchors(hw, torch.device("cpu"))
    ours = postprocess(ours, anchors, counts, image_hw, InferenceParams())
    for t, o in zip(theirs, ours):
        assert len(o.scores) > 10 and len(t.scores) == len(o.scores)
        # mmdetection's score voting lists the detections class by class; lad's by score
        t_order, o_order = (_by_class_and_score(d.labels, d.scores) for d in (t, o))
        assert torch.equal(t.labels[t_order], o.labels[o_order])
        assert (t.scores[t_order] - o.scores[o_order]).abs().max() <= 1e-5
        t_boxes, o_boxes = t.bboxes[t_order], o.boxes[o_order]
        # A box clipped to nothing (wholly outside the image) has IoU 0/0 with its voters:
        # mmdetection's voting gives NaN, lad's keeps the box (model/postprocess.py).
        lost = t_boxes.isnan().any(1)
        assert ((o_boxes[lost, 2] - o_boxes[lost, 0]) * (o_boxes[lost, 3] - o_boxes[lost, 1]) == 0).all()
        assert (t_boxes[~lost] - o_boxes[~lost]).abs().max() <= 1e-3


def _by_class_and_score(labels, scores):
    return torch.as_tensor(sorted(range(len(labels)), key=lambda i: (int(labels[i]), -float(scores[i]))), dtype=torch.long)


def test_import_records_layout_classes_and_provenance(r50):
    _, lad, ckpt, source = r50
    assert lad.config.arch == "resnet50" and lad.config.layout.centre_offset == 0.0
    assert ckpt["categories"] == COCO_CATEGORIES and ckpt["categories"][-1] == {"id": 90, "name": "toothbrush"}
    assert ckpt["imported_from"]["file"] == source.name and ckpt["imported_from"]["mmengine_version"] == "0.10.7"


# A small PAA as mmdetection builds it (ResNet-18, one conv per tower), for what needs no R50.
SMALL = {"backbone.depth": 18, "neck.in_channels": [64, 128, 256, 512], "bbox_head.stacked_convs": 1}


@pytest.fixture(scope="module")
def small():
    return build_mmdet_paa(**SMALL)[0]


def test_a_2x_checkpoint_with_class_names_imports(small, tmp_path):
    """mmdetection 2.x's layout: meta with CLASSES and mmdet_version, the config as `config`."""
    model = small
    classes = [f"thing{i}" for i in range(80)]
    torch.save({"meta": {"mmdet_version": "2.25.0", "CLASSES": tuple(classes), "config": "model = dict(type='PAA')"},
                "state_dict": model.state_dict()}, tmp_path / "old.pth")
    result = invoke("import", tmp_path / "old.pth", "--out", tmp_path / "old.pt")
    assert result.exit_code == 0, result.output
    ckpt = load_detector(tmp_path / "old.pt")[1]
    assert [c["name"] for c in ckpt["categories"]] == classes and ckpt["imported_from"]["mmdet_version"] == "2.25.0"


def _refused(tmp_path, obj, name="other.pth"):
    torch.save(obj, tmp_path / name)
    result = invoke("import", tmp_path / name, "--out", tmp_path / "out.pt")
    assert result.exit_code == 2 and not (tmp_path / "out.pt").exists(), result.output
    return result.stderr


def test_a_faster_rcnn_is_refused(small, tmp_path):
    model = small
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("bbox_head.")}
    state.update({"rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3), "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)})
    assert "no bbox_head (it has roi_head, rpn_head): a two-stage or other detector; lad imports PAA" in _refused(
        tmp_path, {"meta": {}, "state_dict": state})
    meta = {"cfg": "model = dict(\n    type='FasterRCNN',\n    backbone=dict(type='ResNet'))"}
    assert "its config builds a FasterRCNN detector, not PAA" in _refused(tmp_path, {"meta": meta, "state_dict": state})


def test_an_atss_head_without_iou_branch_is_refused(small, tmp_path):
    model = small
    state = {k: v for k, v in model.state_dict().items() if "atss_centerness" not in k}
    assert "not a PAA head: an ATSS/PAA head without the IoU branch (atss_centerness)" in _refused(
        tmp_path, {"meta": {}, "state_dict": state})


def test_a_resnext_backbone_is_refused(tmp_path):
    model, cfg = build_mmdet_paa(**{"backbone.type": "ResNeXt", "backbone.groups": 32, "backbone.base_width": 4})
    save_as_mmdet(model, cfg, tmp_path / "x.pth")
    result = invoke("import", tmp_path / "x.pth", "--out", tmp_path / "x.pt")
    assert result.exit_code == 2 and "its backbone is a ResNeXt; lad imports ResNet-18/34/50/101" in result.stderr
    # Without the config in its meta, the shapes tell.
    message = _refused(tmp_path, {"state_dict": model.state_dict()})
    assert "backbone.layer1.0.conv1.weight: shape (128, 64, 1, 1), a resnet50 PAA's is (64, 64, 1, 1) (a ResNeXt" in message, message


def test_a_training_checkpoint_with_logging_objects_is_refused_without_running_them(small, tmp_path):
    """mmengine's runner also saves its message hub (HistoryBuffer objects): weights_only
    refuses them, naming the class, and the message says how to publish the file."""
    from mmengine.logging import HistoryBuffer
    model = small
    path = tmp_path / "epoch_12.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict(), "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, path)
    result = invoke("import", path, "--out", tmp_path / "out.pt")
    assert result.exit_code == 2 and "HistoryBuffer" in result.stderr and "publish_model.py" in result.stderr


# The zoo path end to end on the embedded data: the small PAA with anchors of 4 strides (the
# set's objects are small).
SMALL_SYNTH = {**SMALL, "bbox_head.anchor_generator.octave_base_scale": 4}
RUN = ["--size", "64", "--max-size", "96", "--batch", "4", "--warmup", "2", "--log-every", "1", "--device", "cpu",
       "--workers", "0"]


def test_zoo_teacher_end_to_end_on_the_embedded_data(synth_data, tmp_path):
    categories = json.loads((synth_data / "annotations" / "train.json").read_text())["categories"]
    names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    model, cfg = build_mmdet_paa(**SMALL_SYNTH, **{"bbox_head.num_classes": len(names)})
    source = save_as_mmdet(model, cfg, tmp_path / "paa_r18_small.pth", classes=names)
    teacher = tmp_path / "teacher.pt"
    result = invoke("import", source, "--out", teacher, "--data", synth_data, "--split", "train", "--size", "64",
                    "--max-size", "96")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["anchor_layout"] == {"strides": [8, 16, 32, 64, 128], "octave_base_scale": 4,
                                                         "centre_offset": 0.0}
    info = invoke("info", teacher)
    assert info.exit_code == 0 and "centre offset 0.0" in info.stdout, info.output
    assert f"imported from mmdetection's {source.name}" in info.stdout
    assert invoke("eval", "--checkpoint", teacher, "--data", synth_data, "--device", "cpu").exit_code == 0
    cache = tmp_path / "cache.zarr"
    result = invoke("assign", "--teacher", teacher, "--data", synth_data, "--cache", cache, "--device", "cpu")
    assert result.exit_code == 0, result.output
    info = json.loads(invoke("cache", "info", cache, "--json").stdout)
    assert info["anchor_layout"]["centre_offset"] == 0.0
    student = ["student-train", "--data", synth_data, "--cache", cache, "--epochs", "1", "--val-split", "",
               "--arch", "resnet18", "--width", "16", "--head-depth", "1", *RUN[4:]]
    result = invoke(*student, "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s" / "config.json").read_text())["anchor_offset"] == 0.0
    result = invoke(*student, "--out", tmp_path / "s2", "--anchor-offset", "0.5")
    assert result.exit_code == 2 and "anchor_layout differs" in result.stderr, result.output


def test_init_starts_a_student_from_an_imported_checkpoint(synth_data, tmp_path):
    """--init: on the file's own classes every weight is the checkpoint's; on other categories
    the class logits (head.cls_out) are re-initialised, and the student keeps the import's anchors."""
    model, cfg = build_mmdet_paa(**{**SMALL_SYNTH, "bbox_head.num_classes": 80})
    source = save_as_mmdet(model, cfg, tmp_path / "coco_small.pth")
    assert invoke("import", source, "--out", tmp_path / "coco.pt", "--size", "64", "--max-size", "96").exit_code == 0
    args = ["student-train", "--data", synth_data, "--init", tmp_path / "coco.pt", "--epochs", "1", "--val-split", "",
            "--arch", "resnet18", "--width", "256", "--head-depth", "1", "--lr", "0", *RUN[4:]]
    result = invoke(*args, "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "head.cls_out (the class logits) re-initialised" in " ".join(result.output.split())
    imported, _ = load_detector(tmp_path / "coco.pt")
    trained, ckpt = load_detector(tmp_path / "s" / "last.pt")
    assert ckpt["detector"]["layout"]["centre_offset"] == 0.0 and trained.head.cls_out.out_channels == 6
    assert torch.equal(trained.head.box_out.weight, imported.head.box_out.weight)  # lr 0: as loaded
    assert torch.equal(trained.backbone.layer4[0].conv1.weight, imported.backbone.layer4[0].conv1.weight)
    result = invoke(*args, "--out", tmp_path / "s2", "--anchor-offset", "0.5")
    assert result.exit_code == 2 and "its anchor_layout is" in result.stderr, result.output
