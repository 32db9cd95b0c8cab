"""A detector from a configuration or from a checkpoint: what training, evaluation, the
teacher and the pictures all need. A checkpoint is read without running code
(weights_only), checked field by field, with one-line errors."""
from pathlib import Path

import torch

from ..errors import LadError
from ..files import read_torch_file
from .anchors import AnchorLayout
from .backbone import load_backbone_weights
from .detector import DetectorConfig, PAADetector

CHECKPOINT_FORMAT = "lad-checkpoint/1"
# Beyond any detector of this family (the paper's: 256, 4); a checkpoint asking for more would
# take minutes to even lay out before its weights could be found not to fit.
MAX_WIDTH, MAX_HEAD_DEPTH = 4096, 32


def new_detector(arch: str, num_classes: int, width: int, head_depth: int, weights: str | None,
                 anchor_scale: int = 8, anchor_offset: float = 0.5) -> PAADetector:
    """A fresh detector; with backbone weights, its stem is frozen and BatchNorm fixed."""
    layout = AnchorLayout(octave_base_scale=anchor_scale, centre_offset=anchor_offset)
    net = PAADetector(DetectorConfig(arch, num_classes, width, head_depth, layout))
    if weights:
        load_backbone_weights(net.backbone, arch, weights)
        net.backbone.freeze_stem()
    return net


def load_checkpoint(path: Path) -> dict:
    """A lad checkpoint, read with weights_only=True (loading it runs no code) and the fields
    every reader uses checked: any problem is a one-line LadError."""
    path = Path(path)
    ckpt = read_torch_file(path, "checkpoint", "lad checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LadError(f"{path}: not a lad checkpoint")
    problem = _field_problem(ckpt)
    if problem:
        raise LadError(f"{path}: not a lad checkpoint ({problem})")
    return ckpt


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _field_problem(ckpt: dict) -> str | None:
    """What is wrong with the weights, detector, categories or input size of a checkpoint."""
    model = ckpt.get("model")
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "model: not a state dict of tensors"
    try:
        config = DetectorConfig.from_dict(ckpt.get("detector"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return "detector: not a detector configuration"
    layout = config.layout
    if not (isinstance(config.arch, str) and all(map(_positive_int, (config.num_classes, config.width, config.head_depth,
                                                                     layout.octave_base_scale)))
            and config.width <= MAX_WIDTH and config.head_depth <= MAX_HEAD_DEPTH
            and layout.strides == AnchorLayout().strides  # the FPN's P3-P7: fixed by the network
            and isinstance(layout.centre_offset, (int, float)) and 0 <= layout.centre_offset <= 1):
        return f"detector: {ckpt['detector']}"[:160]
    categories = ckpt.get("categories")
    if not (isinstance(categories, list) and len(categories) == config.num_classes
            and all(isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) for c in categories)):
        return "categories: not one {id, name} per class"
    for key in ("size", "max_size"):
        if not _positive_int(ckpt.get(key)):
            return f"{key}: not a positive integer"
    return None


def build_detector(ckpt: dict, path: Path) -> PAADetector:
    """The checkpoint's network with its weights; weights that do not fit are a LadError."""
    config = DetectorConfig.from_dict(ckpt["detector"])
    try:
        with torch.device("meta"):  # the shapes first, without memory: a checkpoint can ask for any size
            shapes = PAADetector(config).state_dict()
    except (ValueError, RuntimeError) as exc:
        raise LadError(f"{path}: its detector configuration cannot be built ({str(exc).splitlines()[0][:120]})") from None
    mismatch = _mismatch(shapes, ckpt["model"])
    if mismatch:
        raise LadError(f"{path}: weights do not fit a {config.arch} detector ({mismatch})")
    model = PAADetector(config)
    model.load_state_dict(ckpt["model"])
    return model


def _mismatch(expected: dict, state: dict) -> str | None:
    """The first key missing, unexpected, or of another shape or kind of dtype in `state`."""
    for key, ref in expected.items():
        if key not in state:
            return f"missing {key}"
        t = state[key]
        if t.shape != ref.shape:
            return f"{key}: shape {tuple(t.shape)}, the detector's is {tuple(ref.shape)}"
        if t.is_floating_point() != ref.is_floating_point() or (not ref.is_floating_point() and t.dtype != ref.dtype):
            return f"{key}: dtype {t.dtype}, the detector's is {ref.dtype}"
    unexpected = next((key for key in state if key not in expected), None)
    return None if unexpected is None else f"unexpected {unexpected}"


def load_detector(path: Path) -> tuple[PAADetector, dict]:
    """The network of a checkpoint file and the checkpoint itself (categories, input size)."""
    ckpt = load_checkpoint(path)
    return build_detector(ckpt, Path(path)), ckpt


# Layers whose outputs are one per class: a detector started on other categories re-learns them.
CLASS_LAYERS = ("head.cls_out.",)


def start_from(net: PAADetector, ckpt: dict, path: Path, categories: list[dict]) -> list[str]:
    """Load the detector checkpoint `ckpt` (read from `path`) into `net` (a student or peer about to train on
    `categories`), freezing its stem and BatchNorm as with pretrained backbone weights. Its
    architecture, width, head depth and anchor layout must be `net`'s (a LadError names the
    first that differs); on other categories the class layer (CLASS_LAYERS) keeps `net`'s fresh
    initialisation. Returns the keys left at that initialisation."""
    path = Path(path)
    theirs, ours = DetectorConfig.from_dict(ckpt["detector"]), net.config
    for name in ("arch", "width", "head_depth", "layout"):
        if getattr(theirs, name) != getattr(ours, name):
            shown = "anchor_layout" if name == "layout" else name
            raise LadError(f"{path}: its {shown} is {_shown(getattr(theirs, name))}, the network it should start "
                           f"is {_shown(getattr(ours, name))}")
    state = build_detector(ckpt, path).state_dict()
    same = [(c["id"], c["name"]) for c in ckpt["categories"]] == [(c["id"], c["name"]) for c in categories]
    fresh = [] if same else [k for k in state if k.startswith(CLASS_LAYERS)]
    fresh_values = net.state_dict()
    net.load_state_dict({**state, **{k: fresh_values[k] for k in fresh}})
    net.backbone.freeze_stem()
    return fresh


def _shown(value) -> str:
    return str(value.to_dict() if isinstance(value, AnchorLayout) else value)
