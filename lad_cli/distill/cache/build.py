"""`lad assign`: run a frozen teacher over every (image, view) of a split, and store its
assignments in a cache (or only report their statistics)."""
import time
from pathlib import Path

import numpy as np
import torch

from ... import dist
from ...assign.registry import ASSIGNERS, Assigner
from ...data.coco import load_split, locate_split
from ...data.dataset import DetectionDataset
from ...data.loader import make_loader
from ...data.views import parse_views
from ...errors import LadError
from ...outputs import Claim, checkpoint_inputs
from ...progress import progress_bar
from ...runtime import use_bf16
from ..config import AssignConfig
from ..stats import AssignStats
from ..teacher import Teacher
from .remote import has_store, location
from .store import PAD, AssignmentCache, Provenance, anchor_counts, entries_per_shard, file_sha256, quantise_alignment
from .url_claim import UrlClaim, claim_store


def provenance_for(teacher: Teacher, split, views, assigner: Assigner) -> Provenance:
    return Provenance(teacher_sha256=file_sha256(teacher.path), annotations_sha256=split.sha256,
                      views=[v.to_dict() for v in views], anchor_layout=teacher.model.config.layout.to_dict(),
                      assigner={**assigner.record(), "teacher_precision": "bf16" if teacher.bf16 else "float32"},
                      categories=split.categories)


def open_or_create(claim: Claim | UrlClaim, provenance: Provenance, image_ids, padded, max_anchors, shard_entries,
                   resume: bool, alignment: bool = False) -> AssignmentCache:
    """The store at `claim.where`: reopened to finish it (--resume, checked to be the same
    computation; it keeps its format), or created empty (`alignment`: carrying the teacher's). A new store is put in place at once (`--resume` and
    `cache info` find it while it fills); a replacement stays beside the old one until done."""
    where = claim.where
    if resume and has_store(where):
        cache = AssignmentCache.open(where, mode="r+")
        field = cache.provenance.mismatch(provenance)
        if field:
            raise LadError(f"{claim.target}: cannot resume, the cache was made with another {field}")
        if not np.array_equal(cache.image_ids(), image_ids):
            raise LadError(f"{claim.target}: cannot resume, the cache holds other image ids")
        cache.remove_partial_writes()
        return cache
    try:
        AssignmentCache.create(where, provenance, image_ids, padded, max_anchors, shard_entries, alignment)
    except OSError as exc:
        raise LadError(f"{claim.target}: cannot create the cache ({exc.strerror})") from None
    if not claim.replaces:
        claim.commit()
    return AssignmentCache.open(claim.target if claim.committed else where, mode="r+")


def run_assign(cfg: AssignConfig, given: set[str] | None = None) -> dict | None:
    """The summary (on rank 0; None on the other processes). Under torchrun, process r
    computes the shards s with s mod N = r and writes them into the one store: a shard's
    files have one writer, so no locks are needed and the store equals a one-process one.
    `given`: the AssignConfig fields given on the command line (None, a library call: none)."""
    if cfg.resume and cfg.overwrite:
        raise LadError("--resume and --overwrite exclude each other")
    ctx = dist.setup(cfg.device)
    teacher = Teacher(Path(cfg.teacher), ctx.device, use_bf16(ctx.device, cfg.amp))
    split = load_split(*locate_split(cfg.data, cfg.split, cfg.ann, cfg.images), strict_boxes=cfg.strict_boxes)
    teacher.check_data(split)
    views = parse_views(cfg.views, teacher.checkpoint["size"], teacher.checkpoint["max_size"])
    dataset = DetectionDataset(split, views, teacher.model.config.layout.size_divisor)
    padded = dataset.entry_shapes()
    assigner = ASSIGNERS[cfg.assigner] if cfg.assigner else teacher.assigner  # by default, the teacher's
    claims: list = []  # rank 0's claim on the store's path
    try:
        cache, pending = None, [range(ctx.rank, len(padded), ctx.world)]
        if cfg.cache is not None:
            cache = _open_store(cfg, ctx, provenance_for(teacher, split, views, assigner), split, padded,
                                anchor_counts(padded, teacher.model.config.layout), claims, assigner.soft_targets)
            _check_shard_entries(cache, cfg, given)
            done = cache.done()
            pending = [cache.shard_range(s) for s in range(cache.num_shards)
                       if s % ctx.world == ctx.rank and not done[cache.shard_range(s)].all()]
            _record_numerics(ctx, cache, teacher.numerics() if pending else None)
        start = time.perf_counter()
        computed, stats = _teacher_pass(cfg, ctx, teacher, dataset, padded, pending, cache, assigner)
        seconds = time.perf_counter() - start
        every = dist.gather(ctx, (computed, stats))
        for claim in claims:  # every shard is written: a replacement takes the old store's place
            if not claim.committed:
                claim.commit()
                cache = AssignmentCache.open(claim.target)
    finally:
        for claim in claims:  # a replacement with finished shards is kept for --resume
            claim.release(discard=not has_store(claim.where))
    if every is None:
        return None
    computed = sum(t for t, _ in every)
    summary = {"entries": len(padded), "computed": computed, "seconds": round(seconds, 2),
               "seconds_per_image": round(seconds * ctx.world / max(1, computed), 4), "device": str(ctx.device),
               "processes": ctx.world, "assigner": assigner.name}
    if cache is None:
        return {**summary, **AssignStats.combined([s for _, s in every]).summary()}
    return {**summary, "cache": str(cfg.cache), "done": int(cache.done().sum())}


def _check_shard_entries(cache: AssignmentCache, cfg: AssignConfig, given: set[str] | None) -> None:
    """A --shard-entries given on the command line must give the store's layout: a resumed store
    keeps the one it was made with (without the option, it is taken as it is)."""
    requested = entries_per_shard(cfg.shard_entries, cache.num_entries)
    if "shard_entries" in (given or set()) and requested != cache.shard_entries:
        raise LadError(f"{cfg.cache}: cannot resume with --shard-entries {cfg.shard_entries}: the cache has "
                       f"{cache.shard_entries} entries per shard (resume with --shard-entries {cache.shard_entries}, "
                       "or without the option)")


def _record_numerics(ctx: dist.Dist, cache: AssignmentCache, mine: dict | None) -> None:
    """Rank 0 records in the store what decides the numerics of each process that computes
    shards now (`mine`: None for a process with nothing to compute)."""
    every = dist.gather(ctx, mine)
    if every is not None:
        cache.add_numerics([n for n in every if n is not None])


def _open_store(cfg: AssignConfig, ctx: dist.Dist, provenance: Provenance, split, padded: np.ndarray,
                counts: np.ndarray, claims: list, alignment: bool) -> AssignmentCache:
    """Rank 0 claims the store's path (`outputs.claim`), checks and creates (or reopens,
    --resume) the store; then the others open it where rank 0 put it."""
    def create() -> str:
        claim = claim_store(cfg.cache, cfg.overwrite, assign_inputs(cfg), cfg.resume, hint="--resume to finish it or ")
        claims.append(claim)
        cache = open_or_create(claim, provenance, [r.id for r in split.images], padded, int(counts.max(initial=1)),
                               cfg.shard_entries, cfg.resume, alignment)
        created["cache"] = cache
        return str(cache.path)
    created = {}
    path = dist.on_main(ctx, create)
    return created.get("cache") or AssignmentCache.open(location(path), mode="r+")


def assign_inputs(cfg: AssignConfig) -> list:
    """What `lad assign` reads, which the store may not be, hold or lie in."""
    return [cfg.data, cfg.ann, cfg.images, *checkpoint_inputs(cfg.teacher)]


def _teacher_pass(cfg: AssignConfig, ctx: dist.Dist, teacher: Teacher, dataset: DetectionDataset, padded: np.ndarray,
                  pending: list[range], cache: AssignmentCache | None, assigner: Assigner) -> tuple[int, AssignStats]:
    """Assign the `pending` entries batch by batch; write each shard once complete (or gather
    statistics without a cache). Returns the number of entries computed and the statistics."""
    layout = teacher.model.config.layout
    counts = anchor_counts(padded, layout)
    keys = [(e // len(dataset.views), e % len(dataset.views)) for e in range(len(padded))]
    shard_of = [e // cache.shard_entries for e in range(len(keys))] if cache is not None else [0] * len(keys)
    plan = plan_batches(padded, pending, cfg.batch)
    last_of_shard = [i + 1 == len(plan) or shard_of[plan[i + 1][0]] != shard_of[plan[i][0]] for i in range(len(plan))]
    loader = make_loader(dataset, [[keys[e] for e in b] for b in plan], layout.size_divisor, cfg.workers, ctx.device)
    stats, rows, aligned = AssignStats(len(layout.strides)), None, None
    total = sum(len(b) for b in plan)
    start = time.perf_counter()
    with progress_bar(disable=not ctx.is_main) as bar:
        task = bar.add_task("assign", total=total, info="")
        for i, (entries, batch) in enumerate(zip(plan, loader)):
            batch = batch.to(ctx.device)
            matched, pred = teacher.assign(batch, assigner)
            if not bool(torch.isfinite(teacher.largest_output(pred))):  # the pass syncs here anyway (.cpu())
                ids = sorted({dataset.split.images[keys[e][0]].id for e in entries})
                raise LadError(f"{teacher.path}: the teacher's outputs are NaN or infinite on image id(s) "
                               f"{', '.join(map(str, ids))}: it cannot assign (every anchor would be background)")
            alignment = teacher.class_target(batch, matched, pred, assigner) if cache is not None and cache.has_alignment \
                else None
            matched, alignment = matched.cpu(), None if alignment is None else alignment.cpu()
            if cache is None:
                anchors, per_level = teacher.model.anchors(batch.padded_hw, ctx.device)
                cand = assigner.candidates(anchors, batch.targets)
                stats.add(matched, None if cand is None else cand.cpu(), per_level, batch.targets.valid.cpu())
            else:
                r = cache.shard_range(shard_of[entries[0]])
                if rows is None:
                    rows = np.full((len(r), cache.max_anchors), PAD, np.int16)
                    aligned = rows.copy() if alignment is not None else None
                for j, e in enumerate(entries):
                    rows[e - r.start, : counts[e]] = matched[j, : counts[e]].numpy()
                    if aligned is not None:
                        aligned[e - r.start, : counts[e]] = quantise_alignment(alignment[j, : counts[e]].numpy())
                if last_of_shard[i]:
                    cache.write_shard(shard_of[entries[0]], rows, counts[r.start:r.stop], padded[r.start:r.stop], aligned)
                    rows = aligned = None
            done_count = bar.tasks[0].completed + len(entries)
            bar.update(task, advance=len(entries), info=f"{done_count / max(time.perf_counter() - start, 1e-9):.1f} img/s")
    return total, stats


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
