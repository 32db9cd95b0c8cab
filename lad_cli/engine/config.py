"""The resolved configuration of a training run (RUN/config.json); its defaults are the CLI's."""
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import LadError


@dataclass
class TrainConfig:
    out: str
    data: str | None = None
    ann: str | None = None
    images: str | None = None
    split: str = "train"
    val_split: str = "val"
    arch: str = "resnet50"
    weights: str | None = None
    width: int = 256
    head_depth: int = 4
    anchor_scale: int = 8  # anchor side = anchor_scale x stride (8 = paper)
    anchor_offset: float = 0.5  # anchor centres at (x + offset) x stride; 0: mmdetection's (imported networks)
    size: int = 800
    max_size: int = 1333
    views: str = "orig,flip"
    epochs: int = 12
    batch: int = 16
    lr: float | None = None  # None: 0.01 x batch / 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: int = 500
    lr_steps: str | None = None  # epochs at which lr x0.1; None: 8/12 and 11/12 of the run
    clip: float = 35.0
    box_weighting: str | None = None  # None: "iou" for own assignments, "mean" for LAD
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # bf16 autocast: auto (CUDA, or a CPU with bf16 units), bf16, off
    workers: int = 0
    log_every: int = 20
    save_every: int = 0  # also save last.pt every N iterations (0: at epoch ends only)
    skip_nonfinite: int = 0  # batches with a NaN/inf loss to skip before stopping
    eval_every: int = 1
    # Where the assignment comes from (student-train); all None/False: the network's own PAA.
    teacher: str | None = None
    cache: str | None = None
    allow_partial: bool = False
    colearn: bool = False
    peer_arch: str | None = None
    peer_init: str | None = None
    init: str | None = None  # a detector checkpoint the student starts from (trained by lad, or `lad import`ed)
    switch: str = "gt-level"
    soft_label_weight: float | None = None
    soft_label_gamma: float = 0.5
    # With a teacher: "teacher" (LAD), or "student" (its own PAA; the teacher gives soft labels only).
    assign_from: str = "teacher"
    assigner: str = "paa"  # paa or tal: the head loss, and the assignment where the network makes its own
    atss_epochs: int | None = None  # ATSS warm-up epochs; None: a third of the run for a TAL student, else 0
    one_hot_epochs: int = 0  # a LAD student's first epochs on the teacher's assignment with one-hot targets (PAA's loss)
    cross_assigner: bool = False  # accept a cache or teacher of another assigner than --assigner
    # A TAL student of a teacher: whose alignment on the teacher's positives is the class target;
    # None: the teacher's where the source has it (online, or a cache that stores it), else the student's.
    alignment_from: str | None = None
    strict_boxes: bool = False  # refuse boxes without area in their image or overrunning it (else dropped / clipped)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.01 * self.batch / 16

    def decay_epochs(self) -> list[int]:
        if self.lr_steps is not None:
            return [int(s) for s in self.lr_steps.split(",") if s.strip()]
        return [round(self.epochs * 8 / 12), round(self.epochs * 11 / 12)]

    def lr_at(self, iteration: int, epoch: int) -> float:
        """Linear warm-up from 0.001 x lr over `warmup` iterations, then x0.1 at each decay epoch."""
        lr = self.base_lr() * 0.1 ** sum(epoch >= e for e in self.decay_epochs())
        if iteration < self.warmup:
            lr *= 0.001 + (1 - 0.001) * iteration / self.warmup
        return lr


# What may change when a run is resumed, as given on its command line: where it runs, and
# how often it logs, saves and tolerates a non-finite batch; nothing of what it computes.
MACHINE_OPTIONS = ("device", "workers")  # this machine's: always the command line's (default or not)
RESUME_OPTIONS = (*MACHINE_OPTIONS, "log_every", "save_every", "skip_nonfinite")
PATH_FIELDS = ("out", "data", "ann", "images", "weights", "teacher", "cache", "peer_init", "init")


def _same(name: str, a, b) -> bool:
    if a == b:
        return True
    return name in PATH_FIELDS and isinstance(a, str) and isinstance(b, str) and Path(a).resolve() == Path(b).resolve()


def resumed_config(run: dict, saved: dict, cfg: TrainConfig, given: set[str] | None, out) -> TrainConfig:
    """The configuration a run continues with on --resume: its config.json (`run`), which must
    agree with the copy in last.pt (`saved`), with the RESUME_OPTIONS the command line gave
    (`given`: its TrainConfig field names; None, a library call: none). Any other option given
    that contradicts the run is a LadError naming it, never silently ignored."""
    for name in sorted({f.name for f in fields(TrainConfig)} - set(RESUME_OPTIONS)):
        if not _same(name, run.get(name), saved.get(name)):
            raise LadError(f"{out}/config.json and last.pt disagree on {name} ({run.get(name)!r} vs {saved.get(name)!r}): "
                           "restore config.json, or start a new run with --overwrite")
    for name in sorted((given or set()) - set(RESUME_OPTIONS) - {"out"}):
        if name in run and not _same(name, getattr(cfg, name), run[name]):
            flag = "--" + name.replace("_", "-")
            raise LadError(f"{flag} {getattr(cfg, name)} contradicts the run being resumed ({name} {run[name]!r} in "
                           f"{out}/config.json): resume without {flag}, or start a new run with --overwrite")
    now = {k: getattr(cfg, k) for k in RESUME_OPTIONS if k in MACHINE_OPTIONS or k in (given or set())}
    return TrainConfig.from_dict({**run, **now})


# The student's input options that follow its assignment source when not given.
SOURCE_INPUTS = ("size", "max_size", "views", "anchor_scale", "anchor_offset", "assigner")


def student_inputs(given: dict, cache: str | None, teacher: str | None, resume: bool, init: str | None = None) -> dict:
    """--size, --max-size, --views, --anchor-scale, --anchor-offset, --assigner: as given, else as the cache
    (its views are the training views) or the teacher checkpoint recorded them, else the --init
    checkpoint (a network keeps its anchors), else TrainConfig's defaults.
    Explicit options that contradict a cache are refused, naming the field, when the source
    is built; on --resume the run's own config decides and nothing is read here."""
    from ..distill.sources import (
        recorded_inputs,  # here, so that the CLI's `--help` imports no torch
    )

    recorded = {} if resume else recorded_inputs(cache, teacher) or recorded_inputs(None, init)
    return {k: given[k] if given.get(k) is not None else recorded.get(k, getattr(TrainConfig, k)) for k in SOURCE_INPUTS}


@dataclass(frozen=True)
class EvalConfig:
    """What `lad eval` scores: a checkpoint on a split; `detections`: also write them (COCO results json)."""

    checkpoint: str
    data: str | None = None
    split: str = "val"
    ann: str | None = None
    images: str | None = None
    detections: str | None = None
    batch: int = 8
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    scorer: str = "faster-coco-eval"  # or pycocotools: the same numbers (choices.SCORERS)
    strict_boxes: bool = False  # refuse the file's degenerate or overrunning boxes (the scorer reads the file as is)


@dataclass(frozen=True)
class PredictConfig:
    """What `lad predict` runs: a checkpoint on image files, folders or glob patterns (no
    annotations), written to `out` (predictions.json, and images/ when drawn). `size`,
    `max_size`: None = the checkpoint's; detections below `score_thr` are dropped after the
    post-processing of `lad eval`, of which `max_det` per image are kept."""

    checkpoint: str
    sources: tuple[str, ...]
    out: str
    score_thr: float = 0.3
    max_det: int = 100
    size: int | None = None
    max_size: int | None = None
    batch: int = 8
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    overwrite: bool = False
