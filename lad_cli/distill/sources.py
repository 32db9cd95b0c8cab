"""Assignment sources: where a batch's assignment comes from. The loop is the same for all.

`AssignmentSource` is the contract the training loop relies on: `assign` gives the batch's
matched_idxs (plus scalars to log and, for soft labels, the teacher's outputs) from the
batch, every network's predictions, the anchors and the per-level anchor counts; the
other hooks have no-op defaults and are overridden where a source needs them.
"""
import abc
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..assign.registry import ASSIGNERS, WARMUP, Assigner, assigner_named
from ..choices import ALIGNMENT_FROM, ASSIGN_FROM
from ..data.coco import CocoSplit
from ..data.dataset import Batch, DetectionDataset
from ..data.views import View, parse_views
from ..dist import process_mean
from ..errors import LadError
from ..losses import SoftLabelWeights, soft_label_loss
from ..model.build import load_checkpoint, new_detector, start_from
from ..model.detector import DetectorConfig, PAADetector
from ..outputs import is_url
from ..runtime import console
from ..structures import Predictions
from .cache.remote import location
from .cache.store import AssignmentCache, anchor_counts, file_sha256
from .cache.verify import cache_info
from .teacher import Teacher


@dataclass
class SourceOutput:
    matched_idxs: Tensor  # (N, A) int64
    assigner: Assigner  # whose head loss trains on it
    stats: dict[str, Tensor] = field(default_factory=dict)  # scalars logged with the losses
    teacher: Predictions | None = None  # the teacher's outputs, for soft-label terms
    soft_target: Tensor | None = None  # (N, A): the classification target of the positives (None: the assigner's own)
    checks: dict[str, Tensor] = field(default_factory=dict)  # 0-dim values the step stops on when not finite


class AssignmentSource(abc.ABC):
    """What the training loop asks of an assignment source."""

    # GIoU weighting of the GT losses on this source's assignment: "iou" as the PAA baseline,
    # "mean" as the reference LAD head.
    box_weighting: str = "mean"
    # The student's assigner: the head loss it trains with (and its own assignment, where it makes one).
    assigner: Assigner = ASSIGNERS["paa"]

    @abc.abstractmethod
    def assign(self, batch: Batch, preds: dict[str, Predictions], anchors: Tensor, counts: list[int]) -> SourceOutput:
        """The batch's assignment; `preds` holds every trained network's outputs by name."""

    def peers(self) -> dict[str, PAADetector]:
        """Networks trained alongside the student (by name), each on the same assignment."""
        return {}

    def wrap_dataset(self, dataset: DetectionDataset) -> torch.utils.data.Dataset:
        """The training dataset as this source needs it read (the cache adds its entries)."""
        return dataset

    def subset(self) -> list[int] | None:
        """The images to train on (None: all)."""
        return None

    def extra_losses(self, batch: Batch, preds: dict[str, Predictions], out: SourceOutput, anchors: Tensor) -> dict[str, Tensor]:
        """Loss terms besides the GT losses (soft labels)."""
        return {}

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop before each epoch (0-based)."""

    def describe(self, network: str = "student") -> dict:
        """Where the assignments that trained `network` (a key of the loop's networks) came
        from, as JSON values: every checkpoint the run saves records it (`lad info` shows it)."""
        return {"source": "own"}


class OwnAssignment(AssignmentSource):
    """The assigner on the network's own (detached) predictions: the baseline, `teacher-train`."""

    box_weighting = "iou"

    def __init__(self, assigner: Assigner = ASSIGNERS["paa"]):
        self.assigner = assigner

    def assign(self, batch: Batch, preds: dict[str, Predictions], anchors: Tensor, counts: list[int]) -> SourceOutput:
        return SourceOutput(self.assigner.assign(anchors, counts, preds["student"], batch.targets), self.assigner)


class WarmedUp(AssignmentSource):
    """Any source whose first `epochs` epochs use the static ATSS assignment instead (TOOD's
    warm-up: a random network's alignment is noise) and PAA's head loss; then the source.
    `one_hot`: a LAD source keeps its (the teacher's) assignment and only trains it with
    PAA's one-hot head loss during those epochs."""

    def __init__(self, source: AssignmentSource, epochs: int, one_hot: bool = False):
        self.source, self.epochs, self.epoch, self.one_hot = source, epochs, 0, one_hot
        self.box_weighting, self.assigner = source.box_weighting, source.assigner

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.source.set_epoch(epoch)

    def assign(self, batch: Batch, preds: dict[str, Predictions], anchors: Tensor, counts: list[int]) -> SourceOutput:
        if self.epoch >= self.epochs:
            return self.source.assign(batch, preds, anchors, counts)
        if self.one_hot:
            out = self.source.assign(batch, preds, anchors, counts)
            return SourceOutput(out.matched_idxs, WARMUP, checks=out.checks)
        return SourceOutput(WARMUP.assign(anchors, counts, preds["student"], batch.targets), WARMUP)

    def peers(self) -> dict[str, PAADetector]:
        return self.source.peers()

    def wrap_dataset(self, dataset: DetectionDataset) -> torch.utils.data.Dataset:
        return self.source.wrap_dataset(dataset)

    def subset(self) -> list[int] | None:
        return self.source.subset()

    def extra_losses(self, batch: Batch, preds: dict[str, Predictions], out: SourceOutput, anchors: Tensor) -> dict[str, Tensor]:
        return self.source.extra_losses(batch, preds, out, anchors) if self.epoch >= self.epochs else {}

    def describe(self, network: str = "student") -> dict:
        return {**self.source.describe(network), ("one_hot_epochs" if self.one_hot else "atss_warmup_epochs"): self.epochs}


class TeacherAssignment(AssignmentSource):
    """Online LAD: a frozen teacher assigns every batch (optionally soft labels too). With
    `own_assignment` the student keeps its own PAA assignment and the teacher only gives the
    soft labels: soft-label distillation, the baseline the paper compares LAD with."""

    def __init__(self, teacher: Teacher, soft: SoftLabelWeights | None, own_assignment: bool = False,
                 assigner: Assigner = ASSIGNERS["paa"], teacher_target: bool = False):
        self.teacher = teacher
        self.soft = soft
        self.assigner = assigner
        self.own = OwnAssignment(assigner) if own_assignment else None
        # The GT losses weight boxes as their assignment's method does: the PAA baseline or the LAD head.
        self.box_weighting = OwnAssignment.box_weighting if own_assignment else "mean"
        self.teacher_target = teacher_target
        self.teacher_sha256: str | None = None

    def describe(self, network: str = "student") -> dict:
        if self.teacher_sha256 is None:  # once: the file is read whole
            self.teacher_sha256 = file_sha256(self.teacher.path)
        return {"source": "teacher", "teacher": str(self.teacher.path), "teacher_sha256": self.teacher_sha256,
                "teacher_arch": self.teacher.model.config.arch, "assign_from": "student" if self.own else "teacher",
                "soft_label_weight": None if self.soft is None else self.soft.cls,
                **class_target_record(self.assigner, self.teacher_target)}

    def assign(self, batch: Batch, preds: dict[str, Predictions], anchors: Tensor, counts: list[int]) -> SourceOutput:
        if self.own is not None:
            own = self.own.assign(batch, preds, anchors, counts)
            return SourceOutput(own.matched_idxs, self.assigner, teacher=self.teacher.predict(batch.images))
        matched, teacher_pred = self.teacher.assign(batch)
        soft_target = self.teacher.class_target(batch, matched, teacher_pred, self.assigner) if self.teacher_target else None
        return SourceOutput(matched, self.assigner, teacher=teacher_pred if self.soft else None, soft_target=soft_target,
                            checks={"teacher_outputs": self.teacher.largest_output(teacher_pred)})

    def extra_losses(self, batch: Batch, preds: dict[str, Predictions], out: SourceOutput, anchors: Tensor) -> dict[str, Tensor]:
        if self.soft is None:
            return {}
        num_pos = (out.matched_idxs >= 0).sum().float()
        return soft_label_loss(preds["student"], out.teacher, anchors, batch.targets, self.soft, num_pos, process_mean)


class CachedDataset(torch.utils.data.Dataset):
    """The training dataset plus each (image, view)'s cached assignment (and the teacher's
    alignment, with `class_target`), read in the workers."""

    def __init__(self, dataset: DetectionDataset, cache_path: Path | str, counts: np.ndarray, class_target: bool = False):
        self.dataset = dataset
        self.cache_path = cache_path
        self.counts = counts
        self.class_target = class_target
        self.cache, self.opened_by = None, None  # opened lazily, once per worker process
        # obstore's client (a URL cache) hangs in a forked process once its parent used it: the
        # loader starts the workers of such a cache fresh (`data.loader.make_loader`).
        self.worker_start_method = "spawn" if is_url(cache_path) else None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "cache": None, "opened_by": None}  # a worker opens its own

    def __len__(self) -> int:
        return len(self.dataset)

    def shapes(self):
        return self.dataset.shapes()

    def __getitem__(self, key):
        if self.opened_by != os.getpid():  # each worker opens its own store
            self.cache, self.opened_by = AssignmentCache.open(self.cache_path), os.getpid()
        sample = self.dataset[key]
        e = self.cache.entry(*key)
        matched, alignment = self.cache.read_entry(e, int(self.counts[e]))
        sample.matched_idxs = torch.from_numpy(matched)
        if self.class_target:
            sample.class_target = torch.from_numpy(alignment)
        return sample


class CachedAssignment(AssignmentSource):
    """Cached LAD: assignments read from a `lad assign --cache` store; no teacher in memory.

    The store's provenance is compared with what the run knows itself: the annotation file's
    hash and categories, the student's views and anchor layout, the assigner it is configured
    with. The teacher's file and precision are recorded but cannot be checked here (no
    teacher is loaded)."""

    def __init__(self, path: Path | str, split: CocoSplit, layout, views: list[View], allow_partial: bool,
                 assigner: Assigner = ASSIGNERS["paa"], cross_assigner: bool = False, alignment_from: str | None = None):
        self.path = location(path)  # a URL stays one
        self.cache = AssignmentCache.open(self.path)
        self.layout = layout
        self.split = split
        self.assigner = assigner
        made_by = assigner_named(self.cache.provenance.assigner)
        check_assigner(self.path, "cache", made_by, assigner, cross_assigner)
        self.teacher_target = teacher_target_of_cache(self.path, self.cache.has_alignment, made_by, assigner, alignment_from)
        field_name = self.cache.provenance.differs_from({
            "annotations_sha256": split.sha256, "categories": split.categories, "views": [v.to_dict() for v in views],
            "anchor_layout": layout.to_dict(), "assigner": (made_by if cross_assigner else assigner).record()})
        if field_name:
            raise LadError(f"{self.path}: cache does not match the training setup: {field_name} differs")
        entries_done = self.cache.done()
        done = entries_done.reshape(self.cache.num_images, self.cache.num_views).all(1)  # every view of the image
        if not done.all():
            counts = f"{int(entries_done.sum())} of {len(entries_done)} entries"
            if not allow_partial:
                raise LadError(f"{self.path}: cache incomplete: {counts} "
                               "(finish it with lad assign --resume, or pass --allow-partial)")
            console.print(f"[yellow]--allow-partial: cache incomplete ({counts}): training on the {int(done.sum())} "
                          f"of {len(done)} images whose entries are all done")
        self.images_done = np.nonzero(done)[0].tolist()
        self.digest: str | None = None

    def describe(self, network: str = "student") -> dict:
        if self.digest is None:  # once: it reads every entry
            self.digest = cache_info(self.path)["digest"]
        return {"source": "cache", "cache": str(self.path), "digest": self.digest,
                "teacher_sha256": self.cache.provenance.teacher_sha256, "views": [v["name"] for v in self.cache.attrs["views"]],
                "images": len(self.images_done), **class_target_record(self.assigner, self.teacher_target)}

    def subset(self) -> list[int]:
        return self.images_done

    def wrap_dataset(self, dataset: DetectionDataset) -> CachedDataset:
        return CachedDataset(dataset, self.path, anchor_counts(self.cache.padded_hw(), self.layout), self.teacher_target)

    def assign(self, batch: Batch, preds: dict[str, Predictions], anchors: Tensor, counts: list[int]) -> SourceOutput:
        return SourceOutput(batch.matched_idxs, self.assigner, soft_target=batch.class_target)


class CoLearning(AssignmentSource):
    """Co-learning LAD: both networks predict, the switch picks whose predictions assign."""

    def __init__(self, peer: PAADetector, rule: str, student_arch: str, assigner: Assigner = ASSIGNERS["paa"]):
        self.peer = peer
        self.rule = rule
        self.student_arch = student_arch
        self.assigner = assigner

    def peers(self) -> dict[str, PAADetector]:
        return {"peer": self.peer}

    def describe(self, network: str = "student") -> dict:
        other = self.student_arch if network == "peer" else self.peer.config.arch
        return {"source": "colearn", "switch": self.rule, "peer_arch": other}

    def assign(self, batch: Batch, preds: dict[str, Predictions], anchors: Tensor, counts: list[int]) -> SourceOutput:
        matched, share = self.assigner.colearn(anchors, counts, preds["student"], preds["peer"], batch.targets, self.rule)
        return SourceOutput(matched, self.assigner, stats={"student_teaches": share})


def teacher_target_of_cache(path, stored: bool, made_by: Assigner, student: Assigner, alignment_from: str | None) -> bool:
    """Whether a cached TAL student trains on the teacher's stored alignment: by default where
    the store has it; --alignment-from teacher on a store without it is refused. A TAL store
    without it (cache format 1) is said once; a one-hot assigner's store (cross-assigner) has none."""
    if not student.soft_targets or alignment_from == "student":
        return False
    why = "cache format 1: remake it with lad assign --overwrite" if made_by.soft_targets else \
        f"its teacher assigned by {made_by.name}, with one-hot targets"
    if alignment_from == "teacher" and not stored:
        raise LadError(f"{path}: the cache holds no teacher's alignment ({why}); use --alignment-from student")
    if not stored and made_by.soft_targets:
        console.print(f"[yellow]{path}: the cache holds no teacher's alignment (cache format 1): the student's own "
                      "alignment is its class target (lad assign --overwrite stores the teacher's)")
    return stored


def class_target_record(student: Assigner, teacher_target: bool) -> dict:
    """How a run's class targets were made, for `lad info` ({} for a one-hot student)."""
    if not student.soft_targets:
        return {}
    return {"class_target": "teacher's alignment" if teacher_target else "student's own alignment"}


def check_assigner(path: Path, what: str, made_by: Assigner, student: Assigner, cross: bool) -> None:
    """A source of another assigner than the student's is refused, naming the field, unless
    cross-assigner LAD was asked for (--cross-assigner)."""
    if made_by.name != student.name and not cross:
        raise LadError(f"{path}: {what} does not match the training setup: assigner differs ({what}: {made_by.name}, "
                       f"student: {student.name}; pass --cross-assigner to train across assigners)")


def student_assigner(name: str) -> Assigner:
    if name not in ASSIGNERS:
        close = difflib.get_close_matches(name, ASSIGNERS, n=1)
        raise LadError(f"unknown assigner {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                       + f" (one of: {', '.join(ASSIGNERS)})")
    return ASSIGNERS[name]


def build_source(cfg, student: PAADetector, split: CocoSplit, device: torch.device, bf16: bool) -> AssignmentSource:
    """The assignment source a training config (`engine.config.TrainConfig`) asks for."""
    chosen = [name for name, on in (("--cache", cfg.cache), ("--teacher", cfg.teacher), ("--colearn", cfg.colearn)) if on]
    if len(chosen) > 1:
        raise LadError(f"{' and '.join(chosen)} exclude each other: give one assignment source")
    if (cfg.peer_arch or cfg.peer_init) and not cfg.colearn:
        raise LadError("--peer-arch and --peer-init need --colearn")
    if cfg.soft_label_weight is not None and not cfg.teacher:
        why = "the cache holds assignments, not the teacher's outputs" if cfg.cache else "soft labels come from a teacher"
        raise LadError(f"--soft-label-weight needs --teacher ({why})")
    if cfg.assign_from not in ASSIGN_FROM:
        raise LadError(f"unknown --assign-from {cfg.assign_from!r}: use {', '.join(ASSIGN_FROM)}")
    if cfg.assign_from == "student" and not (cfg.teacher and cfg.soft_label_weight is not None):
        raise LadError("--assign-from student needs --teacher and --soft-label-weight (the teacher then gives soft labels only)")
    if cfg.alignment_from not in (None, *ALIGNMENT_FROM):
        raise LadError(f"unknown --alignment-from {cfg.alignment_from!r}: use {', '.join(ALIGNMENT_FROM)}")
    if cfg.alignment_from and not (cfg.teacher or cfg.cache):
        raise LadError(f"--alignment-from {cfg.alignment_from} needs --teacher or --cache (the class target of a LAD student)")
    if cfg.cross_assigner and not (cfg.cache or cfg.teacher):
        raise LadError("--cross-assigner needs --cache or --teacher (the assignments of another assigner)")
    lad = cfg.cache or cfg.teacher
    if cfg.one_hot_epochs and not lad:
        raise LadError("--one-hot-epochs needs --cache or --teacher (one-hot targets on the teacher's assignment)")
    if cfg.one_hot_epochs and cfg.atss_epochs:
        raise LadError("--one-hot-epochs and --atss-epochs exclude each other: give one warm-up")
    assigner = student_assigner(cfg.assigner)
    source = _source(cfg, student, split, device, bf16, assigner)
    if cfg.one_hot_epochs:
        return WarmedUp(source, cfg.one_hot_epochs, one_hot=True)
    # Every TAL student starts on ATSS, a LAD student too: on the teacher's TAL positives from
    # the first step, MobileNetV2 students from ImageNet failed on 1 to 3 seeds of 3 (docs/results.md).
    epochs = cfg.atss_epochs if cfg.atss_epochs is not None else (round(cfg.epochs / 3) if assigner.name == "tal" else 0)
    return WarmedUp(source, epochs) if epochs > 0 else source


def _source(cfg, student: PAADetector, split: CocoSplit, device: torch.device, bf16: bool, assigner: Assigner) -> AssignmentSource:
    if cfg.cache:
        return CachedAssignment(cfg.cache, split, student.config.layout, parse_views(cfg.views, cfg.size, cfg.max_size),
                                cfg.allow_partial, assigner, cfg.cross_assigner, cfg.alignment_from)
    if cfg.teacher:
        teacher = Teacher(Path(cfg.teacher), device, bf16)
        teacher.check_compatible(student, split)
        if cfg.assign_from == "teacher":
            check_assigner(teacher.path, "teacher", teacher.assigner, assigner, cfg.cross_assigner)
        soft = None if cfg.soft_label_weight is None else SoftLabelWeights(cls=cfg.soft_label_weight, gamma=cfg.soft_label_gamma)
        return TeacherAssignment(teacher, soft, own_assignment=cfg.assign_from == "student", assigner=assigner,
                                 teacher_target=cfg.alignment_from != "student" and cfg.assign_from == "teacher")
    if cfg.colearn:
        return CoLearning(_peer(cfg, student, split), cfg.switch, student.config.arch, assigner)
    return OwnAssignment(assigner)


def _peer(cfg, student: PAADetector, split: CocoSplit) -> PAADetector:
    """Co-learning's second network: new (--peer-arch, else the student's), or from --peer-init
    (its architecture, width and head depth; the student's anchors and classes: `start_from`)."""
    layout = student.config.layout
    if not cfg.peer_init:
        return new_detector(cfg.peer_arch or cfg.arch, student.config.num_classes, cfg.width, cfg.head_depth,
                            cfg.weights, layout.octave_base_scale, layout.centre_offset)
    ckpt = load_checkpoint(Path(cfg.peer_init))
    theirs = DetectorConfig.from_dict(ckpt["detector"])
    if cfg.peer_arch and theirs.arch != cfg.peer_arch:
        raise LadError(f"{cfg.peer_init}: a {theirs.arch} checkpoint, but --peer-arch is {cfg.peer_arch}")
    peer = PAADetector(DetectorConfig(theirs.arch, student.config.num_classes, theirs.width, theirs.head_depth, layout))
    start_from(peer, ckpt, Path(cfg.peer_init), split.categories)
    return peer


def recorded_inputs(cache: str | None, teacher: str | None) -> dict:
    """Input size, views and anchor scale recorded by a cache or a teacher checkpoint (the
    student's defaults for them); {} without either."""
    if cache:
        store = AssignmentCache.open(cache)
        views = store.attrs["views"]
        base = next((v for v in views if "@" not in v["name"]), views[0])
        return {"size": base["short_side"], "max_size": base["max_side"], "views": ",".join(v["name"] for v in views),
                "anchor_scale": store.provenance.anchor_layout["octave_base_scale"],
                "anchor_offset": store.provenance.anchor_layout["centre_offset"],
                "assigner": (store.provenance.assigner or {}).get("name", "paa")}
    if teacher:
        ckpt = load_checkpoint(Path(teacher))
        return {"size": ckpt["size"], "max_size": ckpt["max_size"],
                "anchor_scale": ckpt["detector"]["layout"]["octave_base_scale"],
                "anchor_offset": ckpt["detector"]["layout"]["centre_offset"],
                "assigner": (ckpt.get("assigner") or {}).get("name", "paa")}
    return {}
