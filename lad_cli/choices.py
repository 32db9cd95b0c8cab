"""The fixed value sets of options and the grammar of device and view names.

Plain data, no torch: the CLI declares its options as choices from these before it imports
anything heavy (`lad --help` and a mistyped value answer at once), and the code that uses
each set imports it from here (`model.backbone.ARCHS`, `losses.BOX_WEIGHTINGS`, ...), so
adding a value is one line here plus its implementation.
"""
import difflib

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "mobilenet_v3_large")  # model/backbone.py builds each
AMP_MODES = ("auto", "bf16", "off")  # runtime.use_bf16
BOX_WEIGHTINGS = ("iou", "mean")  # losses.detection_loss
SWITCH_RULES = ("gt-level", "iteration")  # assign/colearn.colearn_assign
ASSIGN_FROM = ("teacher", "student")  # distill/sources.build_source
ASSIGNERS = ("paa", "tal")  # assign/registry.ASSIGNERS
ALIGNMENT_FROM = ("student", "teacher")  # distill/sources.build_source (TAL students)
EXPORT_FORMATS = ("onnx", "torchscript")  # export/write.run_export
SCORERS = ("faster-coco-eval", "pycocotools")  # engine/evaluate.coco_metrics: COCOeval's numbers either way
CONVERT_FORMATS = ("voc", "yolo")  # data/convert.convert: the layouts `lad data convert` reads
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")
VIEW_KINDS = ("orig", "flip")  # data/views.parse_views; "KIND@S" sets the shorter side S
# Input sides (--size, --max-size, a view's @S) every command takes, checked while parsing so
# that a side whose tensors cannot fit is refused before anything is allocated. 8192: one
# 8192 x 8192 image takes about 51 GB to train the smallest lad network (resnet18, --width 8,
# --head-depth 1: measured at 760 bytes per input pixel, forward and backward, on the CPU),
# so a larger side does not train on one 80 GB accelerator even at batch 1.
INPUT_SIDES = (32, 8192)


def closest(typed: str, names) -> str:
    """"; did you mean 'x'?" for the valid name closest to a mistyped one, or ""."""
    match = difflib.get_close_matches(typed, list(names), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def device_error(name: str) -> str | None:
    """Why `name` is not a device form (None when it is one)."""
    kind, colon, index = name.partition(":")
    if name in ("auto", "cpu", "cuda") or (kind == "cuda" and colon and index.isascii() and index.isdigit()):
        return None
    return f"unknown device {name!r}: use {', '.join(DEVICE_FORMS)}"


def in_sides(side: int) -> bool:
    return INPUT_SIDES[0] <= side <= INPUT_SIDES[1]


def view_name_error(name: str) -> str | None:
    """Why `name` is not a view name (None when it is one): orig, flip, orig@S or flip@S."""
    kind, at, size = name.partition("@")
    if kind in VIEW_KINDS and at and size.isascii() and size.isdigit() and not in_sides(int(size)):
        return f"view {name!r}: its shorter side must be from {INPUT_SIDES[0]} to {INPUT_SIDES[1]}, as --size"
    if kind in VIEW_KINDS and (not at or (size.isascii() and size.isdigit())):
        return None
    return (f"unknown view {name!r}: use {', '.join(VIEW_KINDS)}, " + " or ".join(f"{k}@SIZE" for k in VIEW_KINDS)
            + ("" if kind in VIEW_KINDS else closest(kind, VIEW_KINDS)))


def view_names(spec: str) -> list[str]:
    """The names of a comma-separated view list, checked: ValueError with the first problem."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if error := view_name_error(name):
            raise ValueError(error)
    if not names:
        raise ValueError("--views names no view")
    if len(set(names)) != len(names):
        raise ValueError(f"--views {spec!r} names a view twice")
    return names
