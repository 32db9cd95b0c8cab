"""lad import: a detector trained elsewhere (mmdetection's model zoo) as a lad checkpoint."""
from pathlib import Path
from typing import Annotated

import typer

from ..choices import INPUT_SIDES
from .app import Ann, Data, Images, app, check_max_size, check_size, emit_json, path_str, takes, user_errors


@app.command("import")
@user_errors
def import_checkpoint(
    file: Annotated[Path, typer.Argument(help="An mmdetection 2.x/3.x PAA checkpoint (.pth), e.g. paa_r101_fpn_1x_coco_*.pth.")],
    out: Annotated[Path, typer.Option(callback=takes("the checkpoint to write"), help="The lad checkpoint to write.")],
    data: Data = None, split: Annotated[str, typer.Option(help="Split whose categories --data names.")] = "val",
    ann: Ann = None, images: Images = None,
    size: Annotated[int, typer.Option(callback=check_size, help=f"Shorter side it sees, {INPUT_SIDES[0]} to {INPUT_SIDES[1]} (800: mmdetection's COCO test scale).")] = 800,
    max_size: Annotated[int, typer.Option(callback=check_max_size, help="Longer-side cap (1333: mmdetection's).")] = 1333,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a lad checkpoint at --out.")] = False,
) -> None:
    """Write an mmdetection PAA checkpoint (ResNet-18/34/50/101, pytorch style) as a lad checkpoint.

    Categories: those of --data (or --ann/--images), which must be the ones it was trained on;
    else the file's own class names; else COCO's 80. Its anchors stay corner-centred (centre
    offset 0) as mmdetection trained them; caches and students made with it follow."""
    from ..engine.zoo import import_mmdet

    emit_json(import_mmdet(file, out, path_str(data), split, path_str(ann), path_str(images), overwrite, size, max_size))
