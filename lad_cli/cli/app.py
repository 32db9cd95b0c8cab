"""The typer application, its command groups, and what every command shares: one-line
errors with exit code 2 (usage mistakes too), JSON results, and the option types of the
training commands. An option with a fixed set of values is a `Literal` of its set in
`lad_cli.choices`, checked by typer before any work."""
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
# The one import of a dependency's private module. typer (>= 0.26) vendors click and exports
# neither UsageError nor NoArgsIsHelpError (fastapi/typer#1867 asked, declined); click itself is
# no dependency, and its classes are not typer's. tests/test_misc_fixes.py fails when typer
# moves or renames them.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from ..choices import (
    AMP_MODES,
    ARCHS,
    ASSIGNERS,
    BOX_WEIGHTINGS,
    DEVICE_FORMS,
    INPUT_SIDES,
    closest,
    device_error,
    in_sides,
    view_name_error,
    view_names,
)
from ..errors import LadError, one_line
from ..outputs import write_text


class OptionError(typer.BadParameter):
    """A bad option value found by one of our callbacks: its message is the whole line."""

    def format_message(self) -> str:
        return self.message


def usage_line(exc: UsageError) -> str:
    """One line for a usage mistake; a value outside an option's choices is answered with the
    valid values and the closest one."""
    param = getattr(exc, "param", None)
    choices = getattr(getattr(param, "type_descriptor", None), "choices", None)
    errors = getattr(exc.__cause__, "errors", None)  # typer checks a Literal through pydantic
    typed = errors()[0].get("input") if callable(errors) else None
    if choices and isinstance(typed, str):
        names = [str(c) for c in choices]
        return f"unknown {param.opts[0]} {typed!r}: use {', '.join(names)}{closest(typed, names)}"
    return " ".join(exc.format_message().split())


class LadGroup(TyperGroup):
    """Usage mistakes in any command (an unknown option, a value outside its choices, a
    missing option) end as every user error does: one line on stderr, exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            if isinstance(exc, NoArgsIsHelpError):  # `lad cache`: the help, as typer shows it
                raise
            typer.echo(f"error: {usage_line(exc)}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(cls=LadGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Label Assignment Distillation for one-stage detectors (PAA and task-aligned assigners).")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: write the embedded synthetic dataset, convert VOC or YOLO ones.")
app.add_typer(data_app, name="data", help="Datasets: write the embedded synthetic dataset (synth), convert VOC or YOLO ones (convert).")
cache_app = typer.Typer(no_args_is_help=True, help="Assignment caches: inspect and verify.")
app.add_typer(cache_app, name="cache", help="Assignment caches: inspect (info) and check (verify).")


def user_errors(fn):
    """A LadError becomes one line on stderr and exit code 2, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LadError as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from None
    return wrapper


def emit_json(obj: dict, path: Optional[Path] = None) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    text = json.dumps(obj, indent=2)
    if path is None or str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    write_text(Path(path), text + "\n")


def path_str(path: Optional[Path]) -> Optional[str]:
    """Paths are kept as strings in configs (they go to config.json)."""
    return None if path is None else str(path)


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters given on the command line (not defaults): what --resume compares."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def takes(what: str):
    """Callback of an option taking a value: a value that is an option name (`--cache --teacher T`
    gives --cache the value "--teacher") means the value was left out."""
    def check(ctx, param, value):
        if value is not None and str(value).startswith("--"):
            raise OptionError(f"{param.opts[0]} takes {what}, not the option name {value}")
        return value
    return check


def _check(error_of):
    """Callback checking a value with a function that says what is wrong with it (or None)."""
    def check(ctx, param, value):
        if value is not None and (error := error_of(value)):
            raise OptionError(error)
        return value
    return check


def _views_error(spec: str) -> str | None:
    try:
        view_names(spec)
    except ValueError as exc:
        return str(exc)
    return None


def _lr_steps_error(spec: str) -> str | None:
    if all(s.strip().isdigit() for s in spec.split(",") if s.strip()):
        return None
    return f"--lr-steps {spec!r}: epochs as integers separated by commas, e.g. 8,11"


def _one_view_error(name: str) -> str | None:
    if "," in name:
        return f"--view {name!r}: give one view, e.g. orig, flip or orig@640"
    return view_name_error(name)


def _lr_error(lr: float) -> str | None:
    # torch's SGD refuses a negative lr (a traceback); 0 keeps the weights, a check some runs make.
    return None if math.isfinite(lr) and lr >= 0 else f"--lr {lr}: the learning rate must be a finite number >= 0"


def _seed_error(seed: int) -> str | None:
    if 0 <= seed < 2**64:  # torch.manual_seed takes up to 2**64 - 1, numpy's generators no negative seed
        return None
    return f"--seed {seed}: a seed is an integer from 0 to 2**64 - 1"


def _side_error(option: str):
    def error(side: int) -> str | None:
        return None if in_sides(side) else f"{option} {side}: must be from {INPUT_SIDES[0]} to {INPUT_SIDES[1]} pixels"
    return error


def _width_error(width: int) -> str | None:
    # The head's GroupNorm has width // 8 groups, at most 32: each must divide the channels.
    if width >= 8 and width % 8 == 0 and (width <= 256 or width % 32 == 0):
        return None
    return f"--width {width}: channels must be a multiple of 8 (of 32 above 256), for the head's GroupNorm groups"


def _clip_error(clip: float) -> str | None:
    # clip_grad_norm_ scales the gradients by clip / norm: 0 zeroes them and a negative clip
    # reverses them (gradient ascent); inf never scales them.
    return None if clip > 0 else f"--clip {clip}: the max gradient norm must be > 0 (inf: no clipping)"


check_device, check_views, check_view = _check(device_error), _check(_views_error), _check(_one_view_error)
check_size, check_max_size = _check(_side_error("--size")), _check(_side_error("--max-size"))


# Options shared by several commands.
Data = Annotated[Optional[Path], typer.Option(callback=takes("the dataset folder"), help="Dataset folder: DIR/annotations/{split}.json + DIR/images/{split}/, or COCO 2017's layout.")]
Ann = Annotated[Optional[Path], typer.Option(callback=takes("the annotation file"), help="Annotation file, with --images, instead of --data.")]
Images = Annotated[Optional[Path], typer.Option(callback=takes("the image folder"), help="Image folder for --ann.")]
Split = Annotated[str, typer.Option(help="Split to train on.")]
ValSplit = Annotated[str, typer.Option(help="Split to validate on after each epoch ('' for none).")]
Arch = Annotated[Literal[ARCHS], typer.Option(help="Backbone.")]
Epochs = Annotated[int, typer.Option(min=1, help="Training epochs.")]
BatchSize = Annotated[int, typer.Option("--batch", min=1, help="Images per iteration.")]
Out = Annotated[Path, typer.Option(callback=takes("the run folder"), help="Run folder: config.json, metrics.jsonl, last.pt, best.pt.")]
Device = Annotated[str, typer.Option(callback=check_device, metavar="|".join(DEVICE_FORMS), help="auto: CUDA when present.")]
Amp = Annotated[Literal[AMP_MODES], typer.Option(help="bf16 autocast: auto (on CUDA, and on CPUs with bf16 units), bf16 or off.")]
Seed = Annotated[int, typer.Option(callback=_check(_seed_error), help="Seed of the weights' init and of the batch/view plan, from 0 to 2**64 - 1.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out with its config.json; an option given that contradicts it is refused.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the output lad wrote there before (only lad's own output of this kind; the new one is written beside it and swapped in when complete).")]
Lr = Annotated[Optional[float], typer.Option(callback=_check(_lr_error), help="Base learning rate, >= 0 [default: 0.01 x batch / 16].")]
Workers = Annotated[int, typer.Option(min=0, help="Data-loading worker processes.")]
Size = Annotated[int, typer.Option(callback=check_size, help=f"Shorter image side after resizing ({INPUT_SIDES[0]} to {INPUT_SIDES[1]}).")]
MaxSize = Annotated[int, typer.Option(callback=check_max_size, help=f"Cap on the longer side after resizing ({INPUT_SIDES[0]} to {INPUT_SIDES[1]}).")]
Width = Annotated[int, typer.Option(callback=_check(_width_error), help="FPN and head channels (256 = paper): a multiple of 8, of 32 above 256 (the head's GroupNorm has width / 8 groups, at most 32).")]
HeadDepth = Annotated[int, typer.Option(min=1, help="Convs per head tower (4 = paper).")]
AnchorScale = Annotated[int, typer.Option(min=1, help="Anchor side in strides (8 = paper; smaller suits small images).")]
Weights = Annotated[Optional[str], typer.Option(help="Backbone weights: a state-dict file of the torchvision classifier of --arch, or 'imagenet' (torchvision's ImageNet-1k weights, from torch's cache or downloaded).")]
Warmup = Annotated[int, typer.Option(min=0, help="Linear warm-up iterations.")]
LrSteps = Annotated[Optional[str], typer.Option(callback=_check(_lr_steps_error), help="Epochs at which lr x0.1, e.g. 8,11 [default: 8/12 and 11/12 of the run].")]
Views = Annotated[str, typer.Option(callback=check_views, help="Training views, e.g. orig,flip (random flip) or orig,flip,orig@640,flip@640.")]
LogEvery = Annotated[int, typer.Option(min=1, help="Log to metrics.jsonl every N iterations.")]
SaveEvery = Annotated[int, typer.Option(min=0, help="Also save last.pt every N iterations (0: at epoch ends).")]
SkipNonfinite = Annotated[int, typer.Option(min=0, help="Skip up to K batches whose loss is NaN/inf (0: stop at the first).")]
Clip = Annotated[float, typer.Option(callback=_check(_clip_error), help="Gradient clipping max norm, > 0 (inf: no clipping).")]
BoxWeighting = Annotated[Optional[Literal[BOX_WEIGHTINGS]], typer.Option(help="GIoU loss weighting: iou (PAA) or mean (reference LAD head) [default: iou for own assignments, mean for LAD].")]
AssignerName = Annotated[Literal[ASSIGNERS], typer.Option("--assigner", help="Label assignment: paa (PAA, the default) or tal (task-aligned, TOOD/YOLOv8).")]
AtssEpochs = Annotated[Optional[int], typer.Option(min=0, help="Epochs of ATSS warm-up before the assigner or the teacher takes over [default: a third of the run for a TAL student, own, co-learned or LAD; else 0].")]
StrictBoxes = Annotated[bool, typer.Option("--strict-boxes", help="Refuse an annotation file with a box of no area inside its image or overrunning it by more than 1 px, instead of dropping or clipping it (with one warning line) as torchvision, mmdetection and detectron2 do.")]
