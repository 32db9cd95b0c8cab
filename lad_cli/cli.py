"""The `lad` command line: parses options and calls the library, nothing else."""
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import LadError, one_line

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


# Options shared by the training commands.
Data = Annotated[Optional[Path], typer.Option(help="Dataset folder: DIR/annotations/{split}.json + DIR/images/{split}/, or COCO 2017's layout.")]
Ann = Annotated[Optional[Path], typer.Option(help="Annotation file, with --images, instead of --data.")]
Images = Annotated[Optional[Path], typer.Option(help="Image folder for --ann.")]
Split = Annotated[str, typer.Option(help="Split to train on.")]
ValSplit = Annotated[str, typer.Option(help="Split to validate on after each epoch ('' for none).")]
Arch = Annotated[str, typer.Option(help="Backbone: resnet18, resnet34, resnet50 or resnet101.")]
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
Weights = Annotated[Optional[str], typer.Option(help="Backbone weights: a torchvision ResNet state-dict file, or 'imagenet' (torchvision's cache).")]
Warmup = Annotated[int, typer.Option(min=0, help="Linear warm-up iterations.")]
LrSteps = Annotated[Optional[str], typer.Option(help="Epochs at which lr x0.1, e.g. 8,11 [default: 8/12 and 11/12 of the run].")]
Views = Annotated[str, typer.Option(help="Training views, e.g. orig,flip (random flip) or orig,flip,orig@640,flip@640.")]
LogEvery = Annotated[int, typer.Option(min=1, help="Log to metrics.jsonl every N iterations.")]
SaveEvery = Annotated[int, typer.Option(min=0, help="Also save last.pt every N iterations (0: at epoch ends).")]
SkipNonfinite = Annotated[int, typer.Option(min=0, help="Skip up to K batches whose loss is NaN/inf (0: stop at the first).")]
Clip = Annotated[float, typer.Option(help="Gradient clipping max norm.")]
BoxWeighting = Annotated[Optional[str], typer.Option(help="GIoU loss weighting: iou (PAA) or mean (reference LAD head) [default: iou for own assignments, mean for LAD].")]


@data_app.command("synth")
@user_errors
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    train: Annotated[int, typer.Option(min=1, help="Training images.")] = 800,
    val: Annotated[int, typer.Option(min=1, help="Validation images.")] = 200,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write the embedded synthetic dataset (COCO format, deterministic)."""
    from .data.make import synthesize

    emit_json(synthesize(out, train, val, seed, overwrite))


@app.command("teacher-train")
@user_errors
def teacher_train(
    out: Out, data: Data = None, ann: Ann = None, images: Images = None, split: Split = "train",
    val_split: ValSplit = "val", arch: Arch = "resnet50",
    epochs: Epochs = 12, batch: BatchSize = 16, lr: Lr = None, device: Device = "auto", amp: Amp = "auto", seed: Seed = 0,
    resume: Resume = False, overwrite: Overwrite = False, workers: Workers = 0, size: Size = 800,
    max_size: MaxSize = 1333, width: Width = 256, head_depth: HeadDepth = 4, anchor_scale: AnchorScale = 8,
    weights: Weights = None,
    warmup: Warmup = 500, lr_steps: LrSteps = None, views: Views = "orig,flip", log_every: LogEvery = 20,
    save_every: SaveEvery = 0, clip: Clip = 35.0, box_weighting: BoxWeighting = None, skip_nonfinite: SkipNonfinite = 0,
) -> None:
    """Train a PAA detector on its own assignments (a teacher, or a baseline)."""
    from .train.config import TrainConfig
    from .train.loop import train

    cfg = TrainConfig(**{k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()
                         if k not in ("resume", "overwrite", "train", "TrainConfig")})
    emit_json(train(cfg, resume=resume, overwrite=overwrite))


@app.command("student-train")
@user_errors
def student_train(
    out: Out, data: Data = None, ann: Ann = None, images: Images = None, split: Split = "train",
    val_split: ValSplit = "val", arch: Arch = "resnet50",
    cache: Annotated[Optional[Path], typer.Option(help="Cached LAD: assignments from this `lad assign --cache` store.")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="Online LAD: this teacher checkpoint assigns every iteration.")] = None,
    colearn: Annotated[bool, typer.Option("--colearn", help="Co-learning LAD with a peer network trained alongside.")] = False,
    peer_arch: Annotated[Optional[str], typer.Option(help="Co-learning peer backbone [default: --arch].")] = None,
    peer_init: Annotated[Optional[Path], typer.Option(help="Start the co-learning peer from this checkpoint.")] = None,
    switch: Annotated[str, typer.Option(help="Co-learning switch: gt-level (released code) or iteration (paper).")] = "gt-level",
    soft_label_weight: Annotated[Optional[float], typer.Option(help="Add soft-label distillation with this class-KL weight (needs --teacher).")] = None,
    soft_label_gamma: Annotated[float, typer.Option(help="Focal exponent of the soft-label KL.")] = 0.5,
    assign_from: Annotated[str, typer.Option(help="With --teacher: whose PAA assignment the GT losses use: teacher (LAD) or student (its own; with --soft-label-weight, plain soft-label distillation).")] = "teacher",
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Train on the finished entries of an incomplete cache.")] = False,
    epochs: Epochs = 12, batch: BatchSize = 16, lr: Lr = None, device: Device = "auto", amp: Amp = "auto", seed: Seed = 0,
    resume: Resume = False, overwrite: Overwrite = False, workers: Workers = 0,
    size: Annotated[Optional[int], typer.Option(min=32, help="Shorter side [default: the teacher's or cache's].")] = None,
    max_size: Annotated[Optional[int], typer.Option(min=32, help="Longer-side cap [default: the teacher's or cache's].")] = None,
    width: Width = 256, head_depth: HeadDepth = 4,
    anchor_scale: Annotated[Optional[int], typer.Option(min=1, help="Anchor side in strides [default: the teacher's or cache's, else 8].")] = None,
    weights: Weights = None, warmup: Warmup = 500,
    lr_steps: LrSteps = None,
    views: Annotated[Optional[str], typer.Option(help="Training views [default: the cache's, else orig,flip].")] = None,
    log_every: LogEvery = 20, save_every: SaveEvery = 0, clip: Clip = 35.0, box_weighting: BoxWeighting = None,
    skip_nonfinite: SkipNonfinite = 0,
) -> None:
    """Train a student on assignments from a cache, an online teacher, a co-learning peer, or itself."""
    from .train.config import TrainConfig
    from .train.loop import train
    from .train.student import resolve_student_inputs

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()
               if k not in ("resume", "overwrite", "train", "TrainConfig", "resolve_student_inputs")}
    cfg = TrainConfig(**resolve_student_inputs(options, resume))
    emit_json(train(cfg, resume=resume, overwrite=overwrite))


@app.command("assign")
@user_errors
def assign(
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint.")],
    data: Data = None, split: Annotated[str, typer.Option(help="Split to assign.")] = "train",
    ann: Ann = None, images: Images = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", "--out", help="Write the assignments to this zarr store.")] = None,
    views: Annotated[str, typer.Option(help="Views to assign, at the teacher's training size: e.g. orig,flip.")] = "orig,flip",
    batch: BatchSize = 8, device: Device = "auto", amp: Amp = "auto", workers: Workers = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted cache, skipping finished shards.")] = False,
    overwrite: Overwrite = False,
    shard_entries: Annotated[int, typer.Option(min=1, help="Entries per shard file (and per resume step).")] = 4096,
) -> None:
    """Run a teacher over a split: store its assignments (--cache) or print their statistics."""
    from .assign.offline import run_assign

    emit_json(run_assign(teacher, data, split, ann, images, cache, views, batch, device, workers, resume, overwrite,
                         shard_entries, amp=amp))


@cache_app.command("info")
@user_errors
def cache_info(
    path: Annotated[Path, typer.Argument(help="A cache written by lad assign --cache.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Entries, completeness, size on disk, provenance and the digest of a cache."""
    from .cache import AssignmentCache, cache_info as info
    from .model.anchors import AnchorLayout

    store = AssignmentCache.open(path)
    result = info(store, AnchorLayout.from_dict(store.provenance.anchor_layout))
    if json_out:
        emit_json(result)
        return
    for key, value in result.items():
        typer.echo(f"{key:>20}: {value}")


@cache_app.command("verify")
@user_errors
def cache_verify(
    path: Annotated[Path, typer.Argument(help="A cache written by lad assign --cache.")],
    data: Data = None, split: Annotated[str, typer.Option(help="Split the cache was made for.")] = "train",
    ann: Ann = None, images: Images = None,
) -> None:
    """Check a cache against its dataset: complete, shapes, GT indices, checksums, provenance."""
    from .assign.offline import verify_store

    typer.echo(verify_store(path, data, split, ann, images))


@app.command("eval")
@user_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A lad checkpoint (last.pt, best.pt).")],
    data: Data = None, split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    ann: Ann = None, images: Images = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as JSON to this file (- for stdout).")] = None,
    detections: Annotated[Optional[Path], typer.Option(help="Write the detections as a COCO results json.")] = None,
    batch: BatchSize = 8, device: Device = "auto", amp: Amp = "auto", workers: Workers = 0,
) -> None:
    """COCO metrics (pycocotools) of a checkpoint on a split."""
    from .evaluate import run_eval

    result = run_eval(checkpoint, data, split, ann, images, detections, batch, device, workers, amp)
    if result is None:  # a torchrun process other than rank 0
        return
    metrics, table = result
    if json_out is not None:
        emit_json(metrics, json_out)
    if json_out is None or str(json_out) != "-":
        typer.echo(table)


@app.command("demo")
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the dataset and the runs.")] = Path("lad-demo"),
    overwrite: Overwrite = False,
) -> None:
    """The whole story on the embedded dataset, on the CPU in minutes."""
    from .demo import run_demo

    typer.echo(run_demo(out, overwrite))


@app.command("show-assign")
@user_errors
def show_assign(
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint: its PAA assignment is drawn.")],
    image: Annotated[int, typer.Option("--image", help="COCO image id.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    student: Annotated[Optional[Path], typer.Option(help="Also draw this checkpoint's own PAA assignment (eval-mode predictions), side by side.")] = None,
    data: Data = None, split: Annotated[str, typer.Option(help="Split holding the image.")] = "train",
    ann: Ann = None, images: Images = None,
    view: Annotated[str, typer.Option(help="The view the networks see, at the teacher's size: orig, flip, orig@S or flip@S.")] = "orig",
    device: Device = "auto", amp: Amp = "auto",
) -> None:
    """Picture of one image's PAA assignment: GT boxes, positive anchors, mixture fits.

    Drawn in the network's input pixels (resized, flipped per --view, padded). Positive
    anchors are dots at their centres in their GT's colour (bigger dots = coarser level),
    ignored anchors black x (crowd regions dashed). Below, the mixture fit of each GT's pooled candidate costs
    (first 8 GTs). Prints a JSON summary with positives per GT.
    """
    from .viz.show_assign import run_show_assign

    emit_json(run_show_assign(teacher, student, data, split, ann, images, image, view, out, device, amp))


@app.command("plot")
@user_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (each with a metrics.jsonl).")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
) -> None:
    """Training curves of runs: each loss term and validation AP/AP50 against the iteration."""
    from .viz.plot import run_plot

    emit_json(run_plot(runs, out))


def main() -> None:
    app()
