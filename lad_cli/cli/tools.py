"""lad data synth, lad eval, lad demo, lad show-assign, lad plot."""
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..choices import CONVERT_FORMATS, SCORERS
from ..engine.config import EvalConfig
from .app import (
    Amp,
    Ann,
    BatchSize,
    Data,
    Device,
    Images,
    Overwrite,
    StrictBoxes,
    Workers,
    app,
    check_view,
    data_app,
    emit_json,
    path_str,
    takes,
    user_errors,
)

E = EvalConfig  # its field defaults are the options' defaults


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
    from ..data.make import synthesize

    emit_json(synthesize(out, train, val, seed, overwrite))


@data_app.command("convert")
@user_errors
def data_convert(
    src: Annotated[Path, typer.Argument(help="VOC folder (Annotations/, JPEGImages/, ImageSets/Main/), or YOLO folder with data.yaml (or the data.yaml).")],
    source_format: Annotated[Literal[CONVERT_FORMATS], typer.Option("--from", help="Layout of SRC: voc or yolo.")],
    out: Annotated[Path, typer.Option(callback=takes("a folder"), help="Folder to write the dataset into (DIR/annotations/{split}.json, DIR/images/{split}/).")],
    split: Annotated[Optional[str], typer.Option(callback=takes("a split name"), help="VOC without ImageSets/Main lists: the name of its one split (default train).")] = None,
    classes: Annotated[Optional[Path], typer.Option(callback=takes("a file"), help="VOC: class names, one a line: their order gives ids 1..N, and classes without boxes are kept (default: the names found, sorted).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Convert a Pascal VOC or ultralytics YOLO dataset to the layout lad reads.

    Prints per split the images, boxes, negatives, and the boxes clipped to their image or
    skipped (no area inside it) as JSON. See docs/data.md.
    """
    from ..data.convert import convert

    emit_json(convert(source_format, src, out, overwrite, split, classes))


@app.command("eval")
@user_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Option(callback=takes("the checkpoint"), help="A lad checkpoint (last.pt, best.pt).")],
    data: Data = None, split: Annotated[str, typer.Option(help="Split to evaluate.")] = E.split,
    ann: Ann = None, images: Images = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=takes("a file (- for stdout)"), help="Write the metrics as JSON to this file (- for stdout).")] = None,
    detections: Annotated[Optional[Path], typer.Option(callback=takes("a file"), help="Write the detections as a COCO results json.")] = None,
    batch: BatchSize = E.batch, device: Device = E.device, amp: Amp = E.amp, workers: Workers = E.workers,
    scorer: Annotated[Literal[SCORERS], typer.Option(help="COCOeval implementation: faster-coco-eval (about 8x faster) or pycocotools (the reference); the same numbers.")] = E.scorer,
    strict_boxes: StrictBoxes = False,
) -> None:
    """COCO metrics (COCOeval's: faster-coco-eval by default, or pycocotools) of a checkpoint on a split.

    Scored on the annotation file as COCOeval reads it (boxes the training reader drops or
    clips count as they are), so AP compares with other toolkits'; APs/APm/APl size the GT
    by the file's `area` field (box width x height where absent).
    """
    from ..engine.evaluate import run_eval

    result = run_eval(EvalConfig(str(checkpoint), path_str(data), split, path_str(ann), path_str(images),
                                 path_str(detections), batch, device, amp, workers, scorer=scorer, strict_boxes=strict_boxes))
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
    out: Annotated[Path, typer.Option(callback=takes("a folder"), help="Folder for the dataset and the runs.")] = Path("lad-demo"),
    overwrite: Overwrite = False, amp: Amp = "auto",
) -> None:
    """The whole story on the embedded dataset, on the CPU in minutes."""
    from ..demo import run_demo

    typer.echo(run_demo(out, overwrite, amp))


@app.command("show-assign")
@user_errors
def show_assign(
    teacher: Annotated[Path, typer.Option(callback=takes("the teacher checkpoint"), help="Teacher checkpoint: its PAA assignment is drawn.")],
    image: Annotated[int, typer.Option("--image", help="COCO image id.")],
    out: Annotated[Path, typer.Option(callback=takes("the PNG file"), help="PNG file to write.")],
    student: Annotated[Optional[Path], typer.Option(callback=takes("a checkpoint"), help="Also draw this checkpoint's own PAA assignment (eval-mode predictions), side by side.")] = None,
    data: Data = None, split: Annotated[str, typer.Option(help="Split holding the image.")] = "train",
    ann: Ann = None, images: Images = None,
    view: Annotated[str, typer.Option(callback=check_view, help="The view the networks see, at the teacher's size: orig, flip, orig@S or flip@S.")] = "orig",
    device: Device = "auto", amp: Amp = "auto", strict_boxes: StrictBoxes = False,
) -> None:
    """Picture of one image's PAA assignment: GT boxes, positive anchors, mixture fits.

    Drawn in the network's input pixels (resized, flipped per --view, padded). Positive
    anchors are dots at their centres in their GT's colour (bigger dots = coarser level),
    ignored anchors black x (crowd regions dashed). Below, the mixture fit of each GT's pooled candidate costs
    (first 8 GTs). Prints a JSON summary with positives per GT.
    """
    from ..viz.show_assign import run_show_assign

    emit_json(run_show_assign(teacher=teacher, student=student, data=data, split=split, ann=ann, images=images,
                              image_id=image, view=view, out=out, device=device, amp=amp, strict_boxes=strict_boxes))


@app.command("plot")
@user_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (each with a metrics.jsonl).")],
    out: Annotated[Path, typer.Option(callback=takes("the PNG file"), help="PNG file to write.")],
) -> None:
    """Training curves of runs: each loss term and validation AP/AP50 against the iteration."""
    from ..viz.plot import run_plot

    emit_json(run_plot(runs, out))
