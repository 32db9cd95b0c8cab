"""The one training loop. Modes differ only in where the assignment comes from
(`distill.sources`); the loop calls the source's contract and nothing else."""
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import dist
from ..data.coco import CocoSplit, load_split, locate_split
from ..data.dataset import DetectionDataset, check_image_files
from ..data.loader import make_loader
from ..data.sampler import ViewBatchSampler
from ..data.views import parse_views
from ..distill.sources import AssignmentSource, build_source
from ..errors import LadError, NonFiniteLoss
from ..losses import LossWeights
from ..model.build import load_checkpoint, new_detector, start_from
from ..outputs import checkpoint_inputs
from ..progress import progress_bar
from ..runtime import console, memory_format, use_bf16
from . import run_dir
from .checkpoint import model_checkpoint, save_atomic
from .config import TrainConfig, resumed_config
from .step import progress_info, train_step, validate

RESUMABLE = ("nets", "optimizer", "state", "metrics_lines")  # what last.pt holds besides the model


def load_data(cfg: TrainConfig) -> tuple[CocoSplit, CocoSplit | None]:
    train = load_split(*locate_split(cfg.data, cfg.split, cfg.ann, cfg.images), strict_boxes=cfg.strict_boxes)
    val = None
    if cfg.data is not None and cfg.val_split:
        try:
            val = load_split(*locate_split(cfg.data, cfg.val_split), strict_boxes=cfg.strict_boxes)
        except LadError as exc:
            if "no split" not in str(exc):
                raise
            console.print(f"[yellow]no {cfg.val_split!r} split in {cfg.data}: training without validation")
    return train, val


@dataclass
class Run:
    """A run in progress: its networks (by name, "student" first), how they are called
    (DDP-wrapped under torchrun), the source, optimizer, loader and resumable state."""

    cfg: TrainConfig
    ctx: dist.Dist
    out: Path
    bf16: bool
    train_split: CocoSplit
    val_split: CocoSplit | None
    nets: dict
    models: dict
    source: AssignmentSource
    params: list
    optimizer: torch.optim.Optimizer
    weights: LossWeights
    sampler: ViewBatchSampler
    loader: torch.utils.data.DataLoader
    state: dict
    metrics: run_dir.MetricsLog | None

    def log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def save(self, name: str) -> None:
        """last.pt / best.pt: everything `--resume` needs; a peer's own `peer_NAME` for eval."""
        if not self.ctx.is_main:
            return
        cfg, split = self.cfg, self.train_split
        full = {**model_checkpoint(self.nets["student"], split, cfg, self.training("student")), "train_config": cfg.to_dict(),
                "nets": {k: n.state_dict() for k, n in self.nets.items()}, "optimizer": self.optimizer.state_dict(),
                "state": self.state, "metrics_lines": self.metrics.lines,
                "val_annotations_sha256": None if self.val_split is None else self.val_split.sha256}
        save_atomic(full, self.out / name)
        for peer in (k for k in self.nets if k != "student"):
            save_atomic({**model_checkpoint(self.nets[peer], split, cfg, self.training(peer)), "state": self.state},
                        self.out / f"{peer}_{name}")

    def training(self, network: str) -> dict:
        """How `network` was trained so far (`lad info`): assignment source, init, schedule, progress."""
        cfg = self.cfg
        return {"assignment": self.source.describe(network), "arch": self.nets[network].config.arch,
                "weights": cfg.weights, "seed": cfg.seed, "epochs": cfg.epochs, "batch": cfg.batch, "lr": cfg.base_lr(),
                "views": cfg.views, "epoch": self.state["epoch"],
                "iteration": self.state["iteration"], "world": self.ctx.world}


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, given: set[str] | None = None) -> dict:
    """Train (and validate each epoch); returns the final summary. The config's source
    options (teacher, cache, colearn) pick where assignments come from. Under torchrun,
    each process trains on its share of every batch (DDP) and rank 0 writes the run.
    `given`: the options given on the command line, checked against the run on --resume.
    A run replacing another (--overwrite) is written beside it and swapped in at the end."""
    target, claims = Path(cfg.out), []
    try:
        run = start(cfg, resume, overwrite, given, claims)
        cfg, state = run.cfg, run.state
        total = cfg.epochs * len(run.sampler.local_plan(0))
        with progress_bar(disable=not run.ctx.is_main) as bar:
            task = bar.add_task(f"train {cfg.arch}", total=total, completed=state["iteration"], info="")
            while state["epoch"] < cfg.epochs:
                train_epoch(run, bar, task, total)
                end_epoch(run)
        if run.metrics is not None:
            run.metrics.close()
        for claim in claims:
            claim.commit()
    finally:
        for claim in claims:  # a replacement with a checkpoint is kept for --resume
            claim.release(discard=not (claim.where / "last.pt").exists())
    return {"run": str(target), "epochs": cfg.epochs, "iterations": state["iteration"], "val": state["val"],
            "best_AP": state["best_ap"] if run.val_split is not None else None}


def run_inputs(cfg: TrainConfig) -> list:
    """What a run reads, which its folder may not be, hold or lie in."""
    weights = cfg.weights if cfg.weights not in (None, "imagenet") else None
    return [cfg.data, cfg.ann, cfg.images, cfg.cache, weights, *checkpoint_inputs(cfg.teacher),
            *checkpoint_inputs(cfg.peer_init), *checkpoint_inputs(cfg.init)]


def start(cfg: TrainConfig, resume: bool, overwrite: bool, given: set[str] | None, claims: list) -> Run:
    """The run folder, data, networks, source, optimizer and loader; on --resume, restored
    from last.pt with the run's config.json (`config.resumed_config`: `given`, the options on
    the command line, may change only how the run is carried out, not what it computes).
    `claims` receives rank 0's claim on the run folder (`run_dir.prepare`), to commit and release."""
    ctx = dist.setup(cfg.device)

    def claim_folder() -> Path:
        claim = run_dir.prepare(Path(cfg.out), resume, overwrite, run_inputs(cfg))
        claims.append(claim)
        return claim.where
    out = dist.on_main(ctx, claim_folder)
    ckpt, run_config = None, None
    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        if not isinstance(ckpt.get("train_config"), dict) or not all(k in ckpt for k in RESUMABLE):
            raise LadError(f"{out / 'last.pt'}: not a checkpoint a run can resume from (no training state)")
        run_config = run_dir.read_config(out)
        run = ckpt["train_config"] if run_config is None else run_config
        cfg = resumed_config(run, ckpt["train_config"], cfg, given, out)
        if ckpt["state"].get("world", 1) != ctx.world:
            raise LadError(f"{out}: the run used {ckpt['state'].get('world', 1)} processes; resume it with as many "
                           f"(this is {ctx.world}), so that the batches and the sampler position match")
    bf16 = use_bf16(ctx.device, cfg.amp)
    train_split, val_split = load_data(cfg)
    dist.on_main(ctx, lambda: check_data(train_split, val_split, ckpt, out))
    nets, source = build_networks(cfg, ctx, train_split, bf16, ckpt)
    if ckpt:
        dist.on_main(ctx, lambda: check_same_source(source, ckpt, out))
    models = {name: torch.nn.parallel.DistributedDataParallel(net, broadcast_buffers=False) if ctx.distributed else net
              for name, net in nets.items()}
    params = [p for net in nets.values() for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.base_lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    divisor = nets["student"].config.layout.size_divisor
    dataset = source.wrap_dataset(DetectionDataset(train_split, parse_views(cfg.views, cfg.size, cfg.max_size), divisor))
    sampler = ViewBatchSampler(dataset.shapes(), cfg.batch, cfg.seed, subset=source.subset(), rank=ctx.rank, world=ctx.world)
    loader = make_loader(dataset, sampler, divisor, cfg.workers, ctx.device, persistent=True)
    if run_config is None and ctx.is_main:  # written once the sources and views were accepted (or restored)
        run_dir.write_config(out, ckpt["train_config"] if ckpt else cfg.to_dict())
    state = {"epoch": 0, "iteration": 0, "batch_in_epoch": 0, "best_ap": -1.0, "val": None, "world": ctx.world}
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    metrics = run_dir.MetricsLog(out / "metrics.jsonl", ckpt["metrics_lines"] if ckpt else None) if ctx.is_main else None
    if metrics is not None and metrics.lost:
        console.print(f"{metrics.path}: {metrics.lost} of the {ckpt['metrics_lines']} lines last.pt saw are lost (the "
                      f"file was cut short or ends mid-line) and cannot be recovered; logging continues from iteration "
                      f"{state['iteration']}", style="yellow", markup=False, soft_wrap=True)
    weights = LossWeights(box_weighting=cfg.box_weighting or source.box_weighting)
    return Run(cfg, ctx, out, bf16, train_split, val_split, nets, models, source, params, optimizer, weights, sampler,
               loader, state, metrics)


def start_student(student, cfg: TrainConfig, split: CocoSplit, announce: bool) -> None:
    """--init: the student starts from a detector checkpoint (`model.build.start_from`)."""
    if cfg.weights:
        raise LadError("--weights and --init exclude each other (--init holds the backbone's weights too)")
    fresh = start_from(student, load_checkpoint(Path(cfg.init)), Path(cfg.init), split.categories)
    if announce and fresh:
        layers = ", ".join(sorted({key.rsplit(".", 1)[0] for key in fresh}))
        console.print(f"--init {cfg.init}: other categories than {split.ann_file}: {layers} (the class logits) "
                      "re-initialised, the rest starts from the checkpoint", markup=False)


def build_networks(cfg: TrainConfig, ctx: dist.Dist, split: CocoSplit, bf16: bool, ckpt: dict | None):
    """The student (seeded), the assignment source and the source's peers, on the device."""
    torch.manual_seed(cfg.seed)
    student = new_detector(cfg.arch, len(split.categories), cfg.width, cfg.head_depth, cfg.weights, cfg.anchor_scale,
                           cfg.anchor_offset)
    if cfg.init:  # also on --resume: it fixes the stem and BatchNorm as the run started with them
        start_student(student, cfg, split, announce=ckpt is None and ctx.is_main)
    source = build_source(cfg, student, split, ctx.device, bf16)
    nets = {"student": student, **source.peers()}
    for name, net in nets.items():
        if ctx.distributed:
            dist.convert_sync_batchnorm(net)
        nets[name] = net.to(ctx.device, memory_format=memory_format(ctx.device))
        if ckpt:
            nets[name].load_state_dict(ckpt["nets"][name])
    return nets, source


RESUMED_ON_OTHER_DATA = "a run is resumed on the data it started on; restore it, or start a new run with --overwrite"


def check_data(train: CocoSplit, val: CocoSplit | None, ckpt: dict | None, out: Path) -> None:
    """Before the first step: on --resume, the annotation files are those last.pt recorded;
    every image of every split the run reads opens and has the size its annotation says."""
    if ckpt:
        for split, recorded in ((train, ckpt["annotations_sha256"]), (val, ckpt.get("val_annotations_sha256"))):
            if split is not None and recorded is not None and split.sha256 != recorded:
                raise LadError(f"{split.ann_file}: changed since the run started (sha256 {split.sha256[:12]}..., "
                               f"{out / 'last.pt'} recorded {recorded[:12]}...): {RESUMED_ON_OTHER_DATA}")
    for split in (train, val):
        if split is not None:
            check_image_files(split)


def check_same_source(source: AssignmentSource, ckpt: dict, out: Path) -> None:
    """On --resume: the cache or the teacher file the assignments come from is the one last.pt
    recorded (the cache's digest and its teacher, the teacher's sha256)."""
    recorded = (ckpt.get("training") or {}).get("assignment") or {}
    now = source.describe("student")
    for key in ("digest", "teacher_sha256"):
        if key in recorded and now.get(key) != recorded[key]:
            what = now["source"]  # cache or teacher: the sources that record these
            raise LadError(f"{now[what]}: the {what} changed since the run started ({key} {str(now.get(key))[:12]}..., "
                           f"{out / 'last.pt'} recorded {str(recorded[key])[:12]}...): {RESUMED_ON_OTHER_DATA}")


def train_epoch(run: Run, bar, task, total: int) -> None:
    """The rest of the current epoch (all of it, unless resumed mid-epoch)."""
    cfg, state = run.cfg, run.state
    epoch = state["epoch"]
    run.sampler.set_epoch(epoch, state["batch_in_epoch"])
    run.source.set_epoch(epoch)
    for net in run.nets.values():
        net.train()
    batches, waited, since = iter(run.loader), 0.0, time.perf_counter()
    while True:
        fetch_start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        waited += time.perf_counter() - fetch_start
        lr = cfg.lr_at(state["iteration"], epoch)
        instances = int(batch.targets.valid.sum())
        logged = step_or_skip(run, batch, lr)
        state["iteration"] += 1
        state["batch_in_epoch"] += 1
        if logged is not None and (state["iteration"] % cfg.log_every == 0 or state["iteration"] == total):
            means = dist.process_mean(torch.stack([v.float() for v in logged.values()])).tolist()
            now = time.perf_counter()
            record = {"iteration": state["iteration"], "epoch": epoch + 1, "lr": lr, **dict(zip(logged, means)),
                      "data_wait": round(waited / max(now - since, 1e-9), 4)}
            waited, since = 0.0, now
            run.log(record)
            bar.update(task, info=progress_info(record, instances, batch.padded_hw, run.ctx.device))
        bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs}")
        if cfg.save_every and state["iteration"] % cfg.save_every == 0:
            run.save("last.pt")


def step_or_skip(run: Run, batch, lr: float) -> dict | None:
    """One train_step; a non-finite loss (nothing was stepped) stops the run, or skips the
    batch within --skip-nonfinite (None: nothing to log)."""
    cfg, state = run.cfg, run.state
    try:
        return train_step(run.models, run.source, batch.to(run.ctx.device), run.optimizer, run.params, run.weights,
                          cfg.clip, lr, run.ctx.device, run.bf16, skippable=cfg.skip_nonfinite > 0)
    except NonFiniteLoss as exc:
        state["skipped_nonfinite"] = state.get("skipped_nonfinite", 0) + 1
        where = f"iteration {state['iteration'] + 1}: {exc}"
        if state["skipped_nonfinite"] > cfg.skip_nonfinite:
            budget = f", more than --skip-nonfinite {cfg.skip_nonfinite}" if cfg.skip_nonfinite else ""
            last = run.out / "last.pt"
            raise LadError(f"{where}{budget}; stopped, last good checkpoint: "
                           f"{last if last.exists() else 'none saved yet'}") from None
        console.print(f"[yellow]{where}: batch skipped ({state['skipped_nonfinite']} of --skip-nonfinite "
                      f"{cfg.skip_nonfinite})")
        run.log({"iteration": state["iteration"] + 1, "epoch": state["epoch"] + 1, "skipped_nonfinite": exc.term})
        return None


def end_epoch(run: Run) -> None:
    """Validate when due, save last.pt, and best.pt when the val AP improved."""
    cfg, state = run.cfg, run.state
    state["epoch"], state["batch_in_epoch"] = state["epoch"] + 1, 0
    improved = run.val_split is None  # without validation, the latest weights are the best known
    if run.val_split is not None and (state["epoch"] % cfg.eval_every == 0 or state["epoch"] == cfg.epochs):
        state["val"] = validate(run.nets, run.val_split, cfg, run.ctx, run.bf16, state, run.log)
        improved = (state["val"]["AP"] or 0.0) > state["best_ap"]
        state["best_ap"] = max(state["best_ap"], state["val"]["AP"] or 0.0)
    run.save("last.pt")
    if improved:
        run.save("best.pt")
