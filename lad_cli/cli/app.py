"""The typer application, its command groups, and what every command shares: one-line
errors with exit code 2, JSON results, and the option types of the training commands."""
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LadError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Label Assignment Distillation for PAA object detectors.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: write the embedded synthetic dataset.")
app.add_typer(data_app, name="data", help="Datasets: write the embedded synthetic dataset.")
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
    try:
        Path(path).write_text(text + "\n")
    except OSError as exc:
        raise LadError(f"{path}: cannot write ({exc.strerror})") from None


def path_str(path: Optional[Path]) -> Optional[str]:
    """Paths are kept as strings in configs (they go to config.json)."""
    return None if path is None else str(path)


# Options shared by several commands.
Data = Annotated[Optional[Path], typer.Option(help="Dataset folder: DIR/annotations/{split}.json + DIR/images/{split}/, or COCO 2017's layout.")]
Ann = Annotated[Optional[Path], typer.Option(help="Annotation file, with --images, instead of --data.")]
Images = Annotated[Optional[Path], typer.Option(help="Image folder for --ann.")]
Split = Annotated[str, typer.Option(help="Split to train on.")]
ValSplit = Annotated[str, typer.Option(help="Split to validate on after each epoch ('' for none).")]
Arch = Annotated[str, typer.Option(help="Backbone: resnet18, resnet34, resnet50, resnet101, mobilenet_v2 or mobilenet_v3_large.")]
Epochs = Annotated[int, typer.Option(min=1, help="Training epochs.")]
BatchSize = Annotated[int, typer.Option("--batch", min=1, help="Images per iteration.")]
Out = Annotated[Path, typer.Option(help="Run folder: config.json, metrics.jsonl, last.pt, best.pt.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
Amp = Annotated[str, typer.Option(help="bf16 autocast: auto (on CUDA, and on CPUs with bf16 units), bf16 or off.")]
Seed = Annotated[int, typer.Option(help="Seed of the weights' init and of the batch/view plan.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out (its config.json wins).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")]
Lr = Annotated[Optional[float], typer.Option(help="Base learning rate [default: 0.01 x batch / 16].")]
Workers = Annotated[int, typer.Option(min=0, help="Data-loading worker processes.")]
Size = Annotated[int, typer.Option(min=32, help="Shorter image side after resizing.")]
MaxSize = Annotated[int, typer.Option(min=32, help="Cap on the longer side after resizing.")]
Width = Annotated[int, typer.Option(min=8, help="FPN and head channels (256 = paper).")]
HeadDepth = Annotated[int, typer.Option(min=1, help="Convs per head tower (4 = paper).")]
AnchorScale = Annotated[int, typer.Option(min=1, help="Anchor side in strides (8 = paper; smaller suits small images).")]
Weights = Annotated[Optional[str], typer.Option(help="Backbone weights: a state-dict file of the torchvision classifier of --arch, or 'imagenet' (torchvision's ImageNet-1k weights, from torch's cache or downloaded).")]
Warmup = Annotated[int, typer.Option(min=0, help="Linear warm-up iterations.")]
LrSteps = Annotated[Optional[str], typer.Option(help="Epochs at which lr x0.1, e.g. 8,11 [default: 8/12 and 11/12 of the run].")]
Views = Annotated[str, typer.Option(help="Training views, e.g. orig,flip (random flip) or orig,flip,orig@640,flip@640.")]
LogEvery = Annotated[int, typer.Option(min=1, help="Log to metrics.jsonl every N iterations.")]
SaveEvery = Annotated[int, typer.Option(min=0, help="Also save last.pt every N iterations (0: at epoch ends).")]
SkipNonfinite = Annotated[int, typer.Option(min=0, help="Skip up to K batches whose loss is NaN/inf (0: stop at the first).")]
Clip = Annotated[float, typer.Option(help="Gradient clipping max norm.")]
BoxWeighting = Annotated[Optional[str], typer.Option(help="GIoU loss weighting: iou (PAA) or mean (reference LAD head) [default: iou for own assignments, mean for LAD].")]
