"""lad teacher-train and lad student-train."""
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..choices import ALIGNMENT_FROM, ARCHS, ASSIGN_FROM, ASSIGNERS, INPUT_SIDES, SWITCH_RULES
from ..engine.config import TrainConfig
from ..errors import LadError
from .app import (
    Amp,
    AnchorScale,
    Ann,
    Arch,
    AssignerName,
    AtssEpochs,
    BatchSize,
    BoxWeighting,
    Clip,
    Data,
    Device,
    Epochs,
    HeadDepth,
    Images,
    LogEvery,
    Lr,
    LrSteps,
    MaxSize,
    Out,
    Overwrite,
    Resume,
    SaveEvery,
    Seed,
    Size,
    SkipNonfinite,
    Split,
    StrictBoxes,
    ValSplit,
    Views,
    Warmup,
    Weights,
    Width,
    Workers,
    app,
    check_max_size,
    check_size,
    check_views,
    emit_json,
    given_options,
    path_str,
    takes,
    user_errors,
)

T = TrainConfig  # its field defaults are the options' defaults


def check_val_split(ctx: typer.Context) -> None:
    """--ann/--images name one split: a --val-split given with them has no folder to be found
    in, so it is refused instead of training without validation (left at its default, it
    means no validation)."""
    given, val_split = given_options(ctx), ctx.params["val_split"]
    if val_split and "val_split" in given and {"ann", "images"} & given and "data" not in given:
        raise LadError(f"--val-split {val_split!r} needs --data (--ann/--images name the training split only)")


@app.command("teacher-train")
@user_errors
def teacher_train(
    ctx: typer.Context, out: Out, data: Data = None, ann: Ann = None, images: Images = None, split: Split = T.split,
    val_split: ValSplit = T.val_split, arch: Arch = T.arch,
    epochs: Epochs = T.epochs, batch: BatchSize = T.batch, lr: Lr = T.lr, device: Device = T.device, amp: Amp = T.amp,
    seed: Seed = T.seed, resume: Resume = False, overwrite: Overwrite = False, workers: Workers = T.workers,
    size: Size = T.size, max_size: MaxSize = T.max_size, width: Width = T.width, head_depth: HeadDepth = T.head_depth,
    anchor_scale: AnchorScale = T.anchor_scale, weights: Weights = T.weights, warmup: Warmup = T.warmup,
    lr_steps: LrSteps = T.lr_steps, views: Views = T.views, log_every: LogEvery = T.log_every,
    save_every: SaveEvery = T.save_every, clip: Clip = T.clip, box_weighting: BoxWeighting = T.box_weighting,
    skip_nonfinite: SkipNonfinite = T.skip_nonfinite, assigner: AssignerName = T.assigner,
    atss_epochs: AtssEpochs = None, strict_boxes: StrictBoxes = False,
) -> None:
    """Train a detector on its own assignments (a teacher, or a baseline)."""
    from ..engine.loop import train

    check_val_split(ctx)
    cfg = TrainConfig(
        out=str(out), data=path_str(data), ann=path_str(ann), images=path_str(images), split=split, val_split=val_split,
        arch=arch, weights=weights, width=width, head_depth=head_depth, anchor_scale=anchor_scale, size=size,
        max_size=max_size, views=views, epochs=epochs, batch=batch, lr=lr, warmup=warmup, lr_steps=lr_steps, clip=clip,
        box_weighting=box_weighting, seed=seed, device=device, amp=amp, workers=workers, log_every=log_every,
        save_every=save_every, skip_nonfinite=skip_nonfinite, assigner=assigner, atss_epochs=atss_epochs,
        strict_boxes=strict_boxes)
    emit_json(train(cfg, resume=resume, overwrite=overwrite, given=given_options(ctx)))


@app.command("student-train")
@user_errors
def student_train(
    ctx: typer.Context, out: Out, data: Data = None, ann: Ann = None, images: Images = None, split: Split = T.split,
    val_split: ValSplit = T.val_split, arch: Arch = T.arch,
    cache: Annotated[Optional[str], typer.Option(callback=takes("the store path"), help="Cached LAD: assignments from this `lad assign --cache` store (a path, or a URL: s3://BUCKET/NAME.zarr).")] = None,
    teacher: Annotated[Optional[Path], typer.Option(callback=takes("the teacher checkpoint"), help="Online LAD: this teacher checkpoint assigns every iteration.")] = None,
    colearn: Annotated[bool, typer.Option("--colearn", help="Co-learning LAD with a peer network trained alongside.")] = False,
    peer_arch: Annotated[Optional[Literal[ARCHS]], typer.Option(help="Co-learning peer backbone [default: --arch].")] = None,
    peer_init: Annotated[Optional[Path], typer.Option(callback=takes("the peer checkpoint"), help="Start the co-learning peer from this checkpoint (lad's or `lad import`ed; class logits re-initialised on other categories).")] = None,
    init: Annotated[Optional[Path], typer.Option(callback=takes("the checkpoint to start from"), help="Start the student from this detector checkpoint (lad's or `lad import`ed: same --arch, --width, --head-depth; class logits re-initialised on other categories; stem and BatchNorm fixed).")] = None,
    switch: Annotated[Literal[SWITCH_RULES], typer.Option(help="Co-learning switch: gt-level (released code) or iteration (paper).")] = T.switch,
    soft_label_weight: Annotated[Optional[float], typer.Option(help="Add soft-label distillation with this class-KL weight (needs --teacher).")] = None,
    soft_label_gamma: Annotated[float, typer.Option(help="Focal exponent of the soft-label KL.")] = T.soft_label_gamma,
    assign_from: Annotated[Literal[ASSIGN_FROM], typer.Option(help="With --teacher: whose PAA assignment the GT losses use: teacher (LAD) or student (its own; with --soft-label-weight, plain soft-label distillation).")] = T.assign_from,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Train on the finished entries of an incomplete cache.")] = False,
    assigner: Annotated[Optional[Literal[ASSIGNERS]], typer.Option(help="paa or tal: the student's head loss, and its assignment where it makes its own [default: the cache's or teacher's, else paa].")] = None,
    cross_assigner: Annotated[bool, typer.Option("--cross-assigner", help="Accept a cache or teacher of another assigner than --assigner (cross-assigner LAD).")] = False,
    alignment_from: Annotated[Optional[Literal[ALIGNMENT_FROM]], typer.Option(help="TAL student of a teacher: class target from the teacher's alignment on its positives (teacher) or the student's own (student) [default: teacher where the teacher or the cache gives it, else student].")] = None,
    atss_epochs: AtssEpochs = None,
    one_hot_epochs: Annotated[int, typer.Option(min=0, help="TAL student of a teacher or cache: its first N epochs train on the teacher's assignment with one-hot class targets (PAA's head loss), then on the alignment.")] = T.one_hot_epochs,
    epochs: Epochs = T.epochs, batch: BatchSize = T.batch, lr: Lr = T.lr, device: Device = T.device, amp: Amp = T.amp,
    seed: Seed = T.seed, resume: Resume = False, overwrite: Overwrite = False, workers: Workers = T.workers,
    size: Annotated[Optional[int], typer.Option(callback=check_size, help=f"Shorter side, {INPUT_SIDES[0]} to {INPUT_SIDES[1]} [default: the teacher's or cache's, else 800].")] = None,
    max_size: Annotated[Optional[int], typer.Option(callback=check_max_size, help=f"Longer-side cap, {INPUT_SIDES[0]} to {INPUT_SIDES[1]} [default: the teacher's or cache's, else 1333].")] = None,
    width: Width = T.width, head_depth: HeadDepth = T.head_depth,
    anchor_scale: Annotated[Optional[int], typer.Option(min=1, help="Anchor side in strides [default: the teacher's or cache's, else 8].")] = None,
    anchor_offset: Annotated[Optional[float], typer.Option(min=0, max=1, help="Anchor centres at (x + offset) x stride: 0.5 (lad's) or 0 (mmdetection's) [default: the teacher's, cache's or --init's, else 0.5].")] = None,
    weights: Weights = T.weights, warmup: Warmup = T.warmup, lr_steps: LrSteps = T.lr_steps,
    views: Annotated[Optional[str], typer.Option(callback=check_views, help="Training views [default: the cache's, else orig,flip].")] = None,
    log_every: LogEvery = T.log_every, save_every: SaveEvery = T.save_every, clip: Clip = T.clip,
    box_weighting: BoxWeighting = T.box_weighting, skip_nonfinite: SkipNonfinite = T.skip_nonfinite,
    strict_boxes: StrictBoxes = False,
) -> None:
    """Train a student on assignments from a cache, an online teacher, a co-learning peer, or itself."""
    from ..engine.config import student_inputs
    from ..engine.loop import train

    check_val_split(ctx)
    inputs = student_inputs({"size": size, "max_size": max_size, "views": views, "anchor_scale": anchor_scale,
                             "anchor_offset": anchor_offset, "assigner": assigner},
                            path_str(cache), path_str(teacher), resume, path_str(init))
    cfg = TrainConfig(
        out=str(out), data=path_str(data), ann=path_str(ann), images=path_str(images), split=split, val_split=val_split,
        arch=arch, weights=weights, width=width, head_depth=head_depth, epochs=epochs, batch=batch, lr=lr,
        warmup=warmup, lr_steps=lr_steps, clip=clip, box_weighting=box_weighting, seed=seed, device=device, amp=amp,
        workers=workers, log_every=log_every, save_every=save_every, skip_nonfinite=skip_nonfinite,
        teacher=path_str(teacher), cache=path_str(cache), allow_partial=allow_partial, colearn=colearn,
        peer_arch=peer_arch, peer_init=path_str(peer_init), init=path_str(init), switch=switch, soft_label_weight=soft_label_weight,
        soft_label_gamma=soft_label_gamma, assign_from=assign_from, cross_assigner=cross_assigner,
        alignment_from=alignment_from, atss_epochs=atss_epochs, one_hot_epochs=one_hot_epochs, strict_boxes=strict_boxes,
        **inputs)
    emit_json(train(cfg, resume=resume, overwrite=overwrite, given=given_options(ctx)))
