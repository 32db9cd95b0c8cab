"""lad predict, lad export, lad info: use a trained detector."""
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..choices import EXPORT_FORMATS, INPUT_SIDES
from ..engine.config import PredictConfig
from ..export.config import ExportConfig
from .app import Amp, BatchSize, Device, Workers, app, check_max_size, check_size, emit_json, path_str, user_errors

P, X = PredictConfig, ExportConfig  # their field defaults are the options' defaults


@app.command("predict")
@user_errors
def predict(
    sources: Annotated[list[str], typer.Argument(help="Image files, folders (their images, not recursive) or glob patterns (quoted; ** recurses).")],
    checkpoint: Annotated[Path, typer.Option(help="A lad checkpoint (last.pt, best.pt).")],
    out: Annotated[Path, typer.Option(help="Output folder: predictions.json, and images/ with --save-images.")],
    score_thr: Annotated[float, typer.Option(min=0, help="Keep detections scoring at least this.")] = P.score_thr,
    max_det: Annotated[int, typer.Option(min=1, help="Detections per image at most (lad eval keeps 100).")] = P.max_det,
    size: Annotated[Optional[int], typer.Option(callback=check_size, help=f"Shorter side, {INPUT_SIDES[0]} to {INPUT_SIDES[1]} (default: the checkpoint's).")] = None,
    max_size: Annotated[Optional[int], typer.Option(callback=check_max_size, help=f"Longer-side cap, {INPUT_SIDES[0]} to {INPUT_SIDES[1]} (default: the checkpoint's).")] = None,
    save_images: Annotated[bool, typer.Option("--save-images", help="Also draw each image with its detections into OUT/images/.")] = False,
    batch: BatchSize = P.batch, device: Device = P.device, amp: Amp = P.amp, workers: Workers = P.workers,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a predict folder lad wrote there before (written beside it, swapped in when complete).")] = False,
) -> None:
    """Detect objects in images without annotations: COCO-format results with file names and sizes."""
    from ..engine.predict import run_predict
    from ..viz.detections import draw_detections

    summary = run_predict(PredictConfig(checkpoint=str(checkpoint), sources=tuple(sources), out=str(out), score_thr=score_thr,
                                        max_det=max_det, size=size, max_size=max_size, batch=batch, device=device, amp=amp,
                                        workers=workers, overwrite=overwrite),
                          draw=draw_detections if save_images else None)
    if summary is not None:  # None: a torchrun process other than rank 0
        emit_json(summary)


@app.command("export")
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Option(help="A lad checkpoint (last.pt, best.pt).")],
    out: Annotated[Path, typer.Option(help="File to write (.onnx, .pt).")],
    format: Annotated[Literal[EXPORT_FORMATS], typer.Option("--format", help="Graph format.")] = X.format,
    size: Annotated[Optional[tuple[int, int]], typer.Option(help="Fix the ONNX input to H W, multiples of 128 (default: any such size).")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Any multiple of 128 as input height and width (the default without --size).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = X.opset,
    check: Annotated[Optional[Path], typer.Option(help="Dataset folder: score the exported file and the eager model on its split, compare their detections.")] = None,
    check_split: Annotated[str, typer.Option(help="Split for --check.")] = X.check_split,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a file lad export wrote there before.")] = False,
) -> None:
    """Export a detector (network, box decoding, class-wise NMS, score voting) as one ONNX or TorchScript graph."""
    from ..errors import LadError
    from ..export.write import run_export

    if dynamic and size is not None:
        raise LadError("--size and --dynamic exclude each other")
    emit_json(run_export(ExportConfig(checkpoint=str(checkpoint), out=str(out), format=format, size=size, opset=opset,
                                      check=path_str(check), check_split=check_split, overwrite=overwrite)))


@app.command("info")
@user_errors
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A lad checkpoint.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Architecture, classes, input size, anchors, parameters, FLOPs and how a checkpoint was trained."""
    from ..engine.info import checkpoint_info, format_info

    result = checkpoint_info(checkpoint)
    if json_out:
        emit_json(result)
    else:
        typer.echo(format_info(result))
