"""mmdetection PAA checkpoints (2.x and 3.x) as lad detectors: the key mapping and the checks.

mmdetection's PAA is lad's network under other names: a torchvision-style ResNet (`pytorch`
style: stride on the 3x3 conv), FPN P3-P7 with the extra convs on the outputs and no ReLU
between them, GroupNorm(32) towers, one anchor per location, an IoU branch
(`atss_centerness`) on the box tower, a learnable scale per level. The conventions that
differ, and how an imported network keeps mmdetection's behaviour:

- anchors: centred on the grid corners (`center_offset` 0; lad trains with 0.5): the
  imported layout records `centre_offset` 0, and every cache made with it records that too;
- towers: `ConvModule`s without bias (GroupNorm follows): lad's tower convs have one, loaded
  as zeros, which computes the same function and keeps lad's network and checkpoint format
  one (a fine-tuned import may then learn those biases);
- input: RGB, ImageNet mean/std in 0-255 (mmdetection's `bgr_to_rgb=True` data
  preprocessor), as lad's; box coder stds 0.1/0.1/0.2/0.2, as lad's; levels P3 first, as lad's.

Nothing here reads files: `mmdet_network` takes the loaded object (read with
`files.read_torch_file`, weights_only)."""
import ast
from dataclasses import dataclass

import torch

from ..errors import LadError
from .anchors import AnchorLayout
from .detector import DetectorConfig, PAADetector

# ResNet blocks per stage and block kind -> lad's architecture (torchvision's key names).
RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
           ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101"}
GN_GROUPS = 32  # mmdetection's PAA towers: GroupNorm(32); lad's give width // 8, at most 32
HEAD_KEYS = ("atss_cls", "atss_reg", "atss_centerness")


@dataclass
class ImportedNetwork:
    config: DetectorConfig
    state: dict  # lad's state dict
    classes: list[str] | None  # the file's meta class names, where it has them
    versions: dict  # mmdet_version / mmengine_version as the file's meta records them


def split_checkpoint(obj, name: str) -> tuple[dict, dict]:
    """(state dict, meta) of an mmdetection checkpoint: `{"meta", "state_dict"}` (2.x, 3.x)
    or a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    elif isinstance(obj, dict) and any(isinstance(k, str) and k.startswith("backbone.") for k in obj):
        state, meta = obj, {}
    else:
        raise LadError(f"{name}: not an mmdetection checkpoint (no 'state_dict')")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise LadError(f"{name}: its state_dict is not a dict of tensors")
    return state, meta


def meta_classes(meta: dict) -> list[str] | None:
    """Class names as 3.x (`dataset_meta.classes`) or 2.x (`CLASSES`) record them."""
    classes = (meta.get("dataset_meta") or {}).get("classes") if isinstance(meta.get("dataset_meta"), dict) else None
    classes = classes if classes is not None else meta.get("CLASSES")
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None


def meta_versions(meta: dict) -> dict:
    """The versions the file records: `mmdet_version` (2.x) and `mmengine_version` (3.x)."""
    return {k: str(meta[k]) for k in ("mmdet_version", "mmengine_version") if isinstance(meta.get(k), str)}


def training_model(text: str) -> dict:
    """The `model = dict(...)` of the training config a checkpoint's meta holds (mmengine's and
    2.x's `pretty_text`), as plain data: read with `ast`, nothing of it runs. {} when absent."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model" for t in node.targets):
            model = _plain(node.value)
            return model if isinstance(model, dict) else {}
    return {}


def _plain(node):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {k.arg: _plain(k.value) for k in node.keywords if k.arg}
    if isinstance(node, ast.Dict):
        return {_plain(k): _plain(v) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_plain(e) for e in node.elts]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def _get(model: dict, path: str, default=None):
    for key in path.split("."):
        model = model.get(key) if isinstance(model, dict) else None
    return default if model is None else model


def _config_problem(model: dict) -> str | None:
    """What in the training config lad's network would not reproduce; None when all fits or
    nothing is recorded (the checks of the weights still apply)."""
    checks = (
        ("type", "PAA", "its config builds a {} detector, not PAA"),
        ("backbone.type", "ResNet", "its backbone is a {}; lad imports ResNet-18/34/50/101"),
        ("backbone.style", "pytorch", "its ResNet is {} style (stride on the 1x1 conv); lad's is pytorch style"),
        ("neck.type", "FPN", "its neck is a {}; lad's is an FPN"),
        ("neck.add_extra_convs", "on_output", "its FPN's extra convs are on {!r}; lad's are on the outputs"),
        ("neck.relu_before_extra_convs", False, "its FPN has a ReLU before the extra convs; lad's has none"),
        ("bbox_head.norm_cfg.type", "GN", "its head towers use {} norms; lad's use GroupNorm"),
        ("bbox_head.norm_cfg.num_groups", GN_GROUPS, "its head's GroupNorm has {} groups; lad's has 32 at 256 channels"),
        ("bbox_head.anchor_generator.ratios", [1.0], "its anchors have ratios {}; lad's PAA has one square anchor per location"),
        ("bbox_head.anchor_generator.scales_per_octave", 1, "its anchors have {} scales per octave; lad's PAA has one"),
        ("bbox_head.anchor_generator.strides", list(AnchorLayout().strides), "its anchor strides are {}; lad's P3-P7 are 8-128"),
        ("bbox_head.anchor_generator.center_offset", 0, "its anchors have center_offset {}; lad imports 0, mmdetection's default"),
        ("bbox_head.bbox_coder.target_stds", [0.1, 0.1, 0.2, 0.2], "its box coder's stds are {}; lad's are 0.1, 0.1, 0.2, 0.2"),
        ("bbox_head.bbox_coder.target_means", [0.0, 0.0, 0.0, 0.0], "its box coder's means are {}; lad's are 0"),
        ("data_preprocessor.bgr_to_rgb", True, "its input is BGR; lad's is RGB"),
        ("data_preprocessor.mean", [123.675, 116.28, 103.53], "its input mean is {}; lad's is ImageNet's in RGB, 0-255"),
        ("data_preprocessor.std", [58.395, 57.12, 57.375], "its input std is {}; lad's is ImageNet's in RGB, 0-255"),
    )
    for path, fits, message in checks:
        value = _get(model, path, fits)
        if value != fits and not (isinstance(value, (list, tuple)) and list(value) == fits):
            return message.format(value)
    return None


def _resnet_arch(state: dict, name: str) -> str:
    blocks = []
    for stage in range(1, 5):
        indices = {int(k.split(".")[2]) for k in state if k.startswith(f"backbone.layer{stage}.") and k.split(".")[2].isdigit()}
        blocks.append(len(indices))
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    arch = RESNETS.get((tuple(blocks), bottleneck))
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise LadError(f"{name}: its backbone has {tuple(blocks)} {kind} blocks per stage; lad imports ResNet-18/34/50/101")
    return arch


def _head_shape(state: dict, name: str) -> tuple[int, int, int]:
    """(num_classes, width, tower depth) of the head; refuses a head that is not PAA's."""
    head = {k.split(".")[1] for k in state if k.startswith("bbox_head.")}
    if not head:
        others = sorted({k.split(".")[0] for k in state} - {"backbone", "neck"})
        raise LadError(f"{name}: no bbox_head (it has {', '.join(others) or 'no head'}): "
                       "a two-stage or other detector; lad imports PAA")
    missing = [k for k in HEAD_KEYS if f"bbox_head.{k}.weight" not in state]
    if missing:
        kinds = ", ".join(sorted(head - {"cls_convs", "reg_convs", "scales"}))
        what = ("an ATSS/PAA head without the IoU branch (atss_centerness)" if missing == ["atss_centerness"]
                else f"bbox_head has {kinds}")
        raise LadError(f"{name}: not a PAA head: {what}; lad imports PAA's atss_cls, atss_reg and atss_centerness")
    anchors = state["bbox_head.atss_reg.weight"].shape[0] // 4
    if anchors != 1:
        raise LadError(f"{name}: its head predicts {anchors} anchors per location; lad's PAA has one")
    width = state["bbox_head.atss_cls.weight"].shape[1]
    if width < 8 * GN_GROUPS:
        raise LadError(f"{name}: head width {width}: mmdetection's towers use GroupNorm({GN_GROUPS}), which lad's "
                       f"towers match at {8 * GN_GROUPS} channels or more")
    depth = len({k.split(".")[2] for k in state if k.startswith("bbox_head.cls_convs.")})
    return state["bbox_head.atss_cls.weight"].shape[0], width, depth


def lad_key(key: str) -> str | None:
    """lad's name for an mmdetection PAA key (None: a key lad's network has no place for)."""
    parts = key.split(".")
    if parts[0] == "backbone":
        if parts[1] in ("conv1", "bn1"):
            return f"backbone.stem.{0 if parts[1] == 'conv1' else 1}.{'.'.join(parts[2:])}"
        return key if parts[1].startswith("layer") else None
    if parts[0] == "neck" and len(parts) == 5 and parts[3] == "conv":
        kind, i, leaf = parts[1], int(parts[2]), parts[4]
        if kind == "lateral_convs":
            return f"fpn.lateral.{i}.{leaf}"
        if kind == "fpn_convs":
            return f"fpn.output.{i}.{leaf}" if i < 3 else f"fpn.p{i + 3}.{leaf}"
        return None
    if parts[0] == "bbox_head":
        if parts[1] in ("cls_convs", "reg_convs") and len(parts) == 5:
            tower = "cls_tower" if parts[1] == "cls_convs" else "box_tower"
            offset = {"conv": 0, "gn": 1}.get(parts[3])
            return None if offset is None else f"head.{tower}.{3 * int(parts[2]) + offset}.{parts[4]}"
        out = {"atss_cls": "cls_out", "atss_reg": "box_out", "atss_centerness": "iou_out"}.get(parts[1])
        if out:
            return f"head.{out}.{'.'.join(parts[2:])}"
        if parts[1] == "scales":
            return key.replace("bbox_head.", "head.", 1)
    return None


def mmdet_network(obj, name: str) -> ImportedNetwork:
    """lad's detector configuration and state dict of an mmdetection PAA checkpoint `obj`,
    or a LadError naming what does not fit."""
    state, meta = split_checkpoint(obj, name)
    text = meta.get("cfg") or meta.get("config")
    model = training_model(text) if isinstance(text, str) else {}
    problem = _config_problem(model)
    if problem:
        raise LadError(f"{name}: {problem}")
    num_classes, width, depth = _head_shape(state, name)
    scale = _get(model, "bbox_head.anchor_generator.octave_base_scale", 8)  # 8: every PAA config of the zoo
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise LadError(f"{name}: its anchors' octave_base_scale {scale!r} is not a positive integer")
    layout = AnchorLayout(octave_base_scale=scale, centre_offset=0.0)
    config = DetectorConfig(_resnet_arch(state, name), num_classes, width, depth, layout)
    ours = {}
    for key, value in state.items():
        target = lad_key(key)
        if target is None:
            raise LadError(f"{name}: {key} has no place in lad's PAA (a DCN, a neck with norms, or another "
                           "architecture); lad imports ResNet + FPN + PAA head")
        ours[target] = value.float() if value.is_floating_point() else value
    with torch.device("meta"):
        expected = PAADetector(config).state_dict()
    for key, ref in expected.items():
        if key.startswith(("head.cls_tower.", "head.box_tower.")) and key.endswith(".bias") and key not in ours:
            ours[key] = torch.zeros(ref.shape)  # mmdetection's towers are bias-free (see above)
    unexpected = next((key for key in state if lad_key(key) not in expected), None)
    if unexpected:
        raise LadError(f"{name}: {unexpected} has no place in a {config.arch} PAA with FPN P3-P7")
    _check_fits(ours, expected, config, name)
    return ImportedNetwork(config, ours, meta_classes(meta), meta_versions(meta))


def _check_fits(ours: dict, expected: dict, config: DetectorConfig, name: str) -> None:
    for key, ref in expected.items():
        if key not in ours:
            raise LadError(f"{name}: no weights for lad's {key} (a {config.arch} PAA needs them)")
        if ours[key].shape != ref.shape:
            hint = " (a ResNeXt or other backbone?)" if key.startswith("backbone.") else ""
            raise LadError(f"{name}: {key}: shape {tuple(ours[key].shape)}, a {config.arch} PAA's is "
                           f"{tuple(ref.shape)}{hint}")
