"""`lad assign`: run a frozen teacher over every (image, view) of a split, and store its
assignments in a cache (or only report their statistics)."""
import time
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..cache import PAD, AssignmentCache, Provenance, anchor_counts, file_sha256, verify_cache
from ..data.coco import load_split, locate_split
from ..data.dataset import Collate, DetectionDataset
from ..data.views import View, parse_views
from ..errors import LadError
from ..model.anchors import AnchorLayout
from ..progress import progress_bar
from ..runtime import use_bf16
from .paa import PAAParams, candidates
from .teacher import Teacher


def provenance_for(teacher: Teacher, split, views, params: PAAParams) -> Provenance:
    return Provenance(teacher_sha256=file_sha256(teacher.path), annotations_sha256=split.sha256,
                      views=[v.to_dict() for v in views], anchor_layout=teacher.model.config.layout.to_dict(),
                      assigner={**params.to_dict(), "teacher_precision": "bf16" if teacher.bf16 else "float32"},
                      categories=split.categories)


def open_or_create(out: Path, provenance: Provenance, image_ids, padded, max_anchors, shard_entries, resume, overwrite):
    exists = out.exists() and any(out.iterdir()) if out.is_dir() else out.exists()
    if exists and not (resume or overwrite):
        raise LadError(f"{out}: a cache is already there; pass --resume to finish it or --overwrite to replace it")
    if resume and exists:
        cache = AssignmentCache.open(out, mode="r+")
        field = cache.provenance.mismatch(provenance)
        if field:
            raise LadError(f"{out}: cannot resume, the cache was made with another {field}")
        if not np.array_equal(cache.image_ids(), image_ids):
            raise LadError(f"{out}: cannot resume, the cache holds other image ids")
        cache.remove_partial_writes()
        return cache
    return AssignmentCache.create(out, provenance, image_ids, padded, max_anchors, shard_entries)


def run_assign(teacher_path: Path, data, split_name: str, ann, images, out: Path | None, views_spec: str, batch: int,
               device_name: str, workers: int, resume: bool = False, overwrite: bool = False,
               shard_entries: int = 4096, amp: str = "auto") -> dict | None:
    """The summary (on rank 0; None on the other processes). Under torchrun, process r
    computes the shards s with s mod N = r and writes them into the one store: a shard's
    files have one writer, so no locks are needed and the store equals a one-process one."""
    ctx = dist.setup(device_name)
    device = ctx.device
    teacher = Teacher(teacher_path, device, use_bf16(device, amp))
    split = load_split(*locate_split(data, split_name, ann, images))
    if [c["id"] for c in teacher.categories] != [c["id"] for c in split.categories]:
        raise LadError(f"{teacher_path}: teacher was trained on other categories than {split.ann_file}")
    views = parse_views(views_spec, teacher.checkpoint["size"], teacher.checkpoint["max_size"])
    layout = teacher.model.config.layout
    dataset = DetectionDataset(split, views, layout.size_divisor)
    keys = [(i, v) for i in range(len(split.images)) for v in range(len(views))]
    padded = np.array([dataset.padded_shape(i, v) for i, v in keys], dtype=np.int32).reshape(-1, 2)
    counts = anchor_counts(padded, layout)
    params = PAAParams()

    cache = None
    if out is not None:
        created = {}  # rank 0 checks and creates the store; then the others open it

        def create():
            created["cache"] = open_or_create(Path(out), provenance_for(teacher, split, views, params),
                                              [r.id for r in split.images], padded, int(counts.max(initial=1)),
                                              shard_entries, resume, overwrite)
        dist.on_main(ctx, create)
        cache = created.get("cache") or AssignmentCache.open(Path(out), mode="r+")
        shard_of = [e // cache.shard_entries for e in range(len(keys))]
        done = cache.done()
        pending = [cache.shard_range(s) for s in range(cache.num_shards)
                   if s % ctx.world == ctx.rank and not done[cache.shard_range(s)].all()]
    else:
        shard_of = [0] * len(keys)
        pending = [range(ctx.rank, len(keys), ctx.world)]

    plan = plan_batches(padded, pending, batch)
    last_of_shard = [i + 1 == len(plan) or shard_of[plan[i + 1][0]] != shard_of[plan[i][0]] for i in range(len(plan))]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[[keys[e] for e in b] for b in plan],
                                         collate_fn=Collate(layout.size_divisor), num_workers=workers,
                                         pin_memory=device.type == "cuda")
    stats = AssignStats(len(layout.strides))
    rows = None
    total = sum(len(b) for b in plan)
    start = time.perf_counter()
    with progress_bar(disable=not ctx.is_main) as bar:
        task = bar.add_task("assign", total=total, info="")
        for i, (entries, batch_data) in enumerate(zip(plan, loader)):
            batch_data = batch_data.to(device)
            matched, _ = teacher.assign(batch_data, params)
            matched = matched.cpu()
            if cache is None:
                anchors, per_level = teacher.model.anchors(batch_data.padded_hw, device)
                stats.add(matched, candidates(anchors, batch_data.targets, params).cpu(), per_level, batch_data.targets.valid.cpu())
            else:
                r = cache.shard_range(shard_of[entries[0]])
                if rows is None:
                    rows = np.full((len(r), cache.attrs["max_anchors"]), PAD, np.int16)
                for e, m in zip(entries, matched.numpy()):
                    rows[e - r.start, : counts[e]] = m
                if last_of_shard[i]:
                    cache.write_shard(shard_of[entries[0]], rows, counts[r.start:r.stop], padded[r.start:r.stop])
                    rows = None
            done_count = bar.tasks[0].completed + len(entries)
            bar.update(task, advance=len(entries), info=f"{done_count / max(time.perf_counter() - start, 1e-9):.1f} img/s")
    seconds = time.perf_counter() - start
    every = dist.gather(ctx, (total, stats))
    if every is None:
        return None
    total = sum(t for t, _ in every)
    summary = {"entries": len(keys), "computed": total, "seconds": round(seconds, 2),
               "seconds_per_image": round(seconds * ctx.world / max(1, total), 4), "device": str(device),
               "processes": ctx.world}
    if cache is None:
        return {**summary, **AssignStats.combined([s for _, s in every]).summary()}
    return {**summary, "cache": str(out), "done": int(cache.done().sum())}


def plan_batches(padded: np.ndarray, shards: list[range], batch: int) -> list[list[int]]:
    """Entry batches of one padded shape each, shard after shard (a shard is written once complete)."""
    plan = []
    for entries in shards:
        by_shape: dict = {}
        for e in entries:
            by_shape.setdefault(tuple(padded[e]), []).append(e)
        for group in by_shape.values():
            plan += [group[j:j + batch] for j in range(0, len(group), batch)]
    return plan


class AssignStats:
    """Positives per GT and per pyramid level, candidates per GT, over a pass."""

    def __init__(self, levels: int):
        self.gts = 0
        self.positives = 0
        self.candidates = 0
        self.per_level = np.zeros(levels, np.int64)
        self.gts_without_positive = 0

    def add(self, matched, cand, per_level, valid) -> None:
        level = torch.repeat_interleave(torch.arange(len(per_level)), torch.tensor(per_level))
        for n in range(matched.shape[0]):
            m = int(valid[n].sum())
            pos = matched[n] >= 0
            self.gts += m
            self.positives += int(pos.sum())
            self.candidates += int((cand[n] >= 0).sum())
            self.per_level += np.bincount(level[pos].numpy(), minlength=len(per_level))
            self.gts_without_positive += m - len(matched[n][pos].unique())

    @classmethod
    def combined(cls, parts: list["AssignStats"]) -> "AssignStats":
        """The statistics of the union of the passes (the processes' shares)."""
        total = cls(len(parts[0].per_level))
        for part in parts:
            for name in ("gts", "positives", "candidates", "gts_without_positive"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.per_level += part.per_level
        return total

    def summary(self) -> dict:
        return {"gts": self.gts, "positives_per_gt": round(self.positives / max(1, self.gts), 2),
                "candidates_per_gt": round(self.candidates / max(1, self.gts), 2),
                "positives_per_level": {f"P{3 + i}": int(c) for i, c in enumerate(self.per_level)},
                "gts_without_positive": self.gts_without_positive}


def verify_store(path: Path, data, split_name: str, ann, images) -> str:
    """`lad cache verify`: the first problem as a LadError, or a one-line OK."""
    cache = AssignmentCache.open(path)
    split = load_split(*locate_split(data, split_name, ann, images))
    layout = AnchorLayout.from_dict(cache.provenance.anchor_layout)
    views = [View(**v) for v in cache.attrs["views"]]
    dataset = DetectionDataset(split, views, layout.size_divisor)
    expected = np.array([dataset.padded_shape(i, v) for i in range(len(split.images)) for v in range(len(views))],
                        dtype=np.int32).reshape(-1, 2)
    verify_cache(cache, split, layout, expected)
    return f"ok: {cache.num_entries} entries ({cache.num_images} images x {len(views)} views) verified"
