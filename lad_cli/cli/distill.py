"""lad assign, lad cache info, lad cache verify."""
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..choices import ASSIGNERS
from ..distill.config import AssignConfig
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
    cache_app,
    check_views,
    emit_json,
    given_options,
    path_str,
    takes,
    user_errors,
)

A = AssignConfig  # its field defaults are the options' defaults


@app.command("assign")
@user_errors
def assign(
    ctx: typer.Context,
    teacher: Annotated[Path, typer.Option(callback=takes("the teacher checkpoint"), help="Teacher checkpoint.")],
    data: Data = None, split: Annotated[str, typer.Option(help="Split to assign.")] = A.split,
    ann: Ann = None, images: Images = None,
    cache: Annotated[Optional[str], typer.Option("--cache", "--out", callback=takes("the store path (--cache OUT.zarr)"),
                                                 help="Write the assignments to this zarr store (a path, or a URL: s3://BUCKET/NAME.zarr).")] = None,
    views: Annotated[str, typer.Option(callback=check_views, help="Views to assign, at the teacher's training size: e.g. orig,flip.")] = A.views,
    batch: BatchSize = A.batch, device: Device = A.device, amp: Amp = A.amp, workers: Workers = A.workers,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted cache, skipping finished shards.")] = False,
    overwrite: Overwrite = False,
    shard_entries: Annotated[int, typer.Option(min=1, help="Entries per shard file (and per resume step); --resume keeps the store's.")] = A.shard_entries,
    assigner: Annotated[Optional[Literal[ASSIGNERS]], typer.Option(help="paa or tal, on the teacher's predictions [default: the one the teacher trained with].")] = None,
    strict_boxes: StrictBoxes = False,
) -> None:
    """Run a teacher over a split: store its assignments (--cache) or print their statistics."""
    from ..distill.cache.build import run_assign

    cfg = AssignConfig(
        teacher=str(teacher), data=path_str(data), split=split, ann=path_str(ann), images=path_str(images),
        cache=path_str(cache), views=views, batch=batch, device=device, amp=amp, workers=workers, resume=resume,
        overwrite=overwrite, shard_entries=shard_entries, assigner=assigner, strict_boxes=strict_boxes)
    try:
        summary = run_assign(cfg, given=given_options(ctx))
    except KeyboardInterrupt:  # Ctrl-C: 130 (128 + SIGINT), as a shell reports a process it interrupted
        kept = "its finished shards are kept; the same lad assign command with --resume continues"
        typer.echo(f"interrupted: {cache}: {kept}" if cache is not None else "interrupted", err=True)
        raise typer.Exit(130) from None
    emit_json(summary)


@cache_app.command("info")
@user_errors
def cache_info(
    path: Annotated[str, typer.Argument(help="A cache written by lad assign --cache (a path or a URL).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Entries, completeness, size on disk, provenance and the digest of a cache."""
    from ..distill.cache.verify import cache_info as info

    result = info(path)
    if json_out:
        emit_json(result)
        return
    for key, value in result.items():
        typer.echo(f"{key:>20}: {value}")


@cache_app.command("verify")
@user_errors
def cache_verify(
    path: Annotated[str, typer.Argument(help="A cache written by lad assign --cache (a path or a URL).")],
    data: Data = None, split: Annotated[str, typer.Option(help="Split the cache was made for.")] = "train",
    ann: Ann = None, images: Images = None, strict_boxes: StrictBoxes = False,
) -> None:
    """Check a cache against its dataset: complete, shapes, GT indices, checksums, provenance."""
    from ..distill.cache.verify import verify_store

    typer.echo(verify_store(path, data, split, ann, images, strict_boxes))
