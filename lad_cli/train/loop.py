"""The one training loop. Modes differ only in where the assignment comes from (sources.py)."""
import json
import time
from pathlib import Path

import torch

from .. import dist
from ..data.coco import CocoSplit, load_split, locate_split
from ..data.dataset import Collate, DetectionDataset
from ..data.sampler import ViewBatchSampler
from ..data.views import View, parse_views
from ..errors import LadError, NonFiniteLoss
from ..evaluate import evaluate_sharded
from ..losses import LossWeights, detection_loss
from ..progress import progress_bar
from ..runtime import autocast, console, memory_format, use_bf16
from . import run_dir
from .checkpoint import load_checkpoint, model_checkpoint, new_detector, save_atomic
from .config import TrainConfig
from .sources import build_source

LOSS_KEYS = ("loss_cls", "loss_box", "loss_iou")


def load_data(cfg: TrainConfig) -> tuple[CocoSplit, CocoSplit | None]:
    train = load_split(*locate_split(cfg.data, cfg.split, cfg.ann, cfg.images))
    val = None
    if cfg.data is not None and cfg.val_split:
        try:
            val = load_split(*locate_split(cfg.data, cfg.val_split))
        except LadError as exc:
            if "no split" not in str(exc):
                raise
            console.print(f"[yellow]no {cfg.val_split!r} split in {cfg.data}: training without validation")
    return train, val


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train (and validate each epoch); returns the final summary. The config's source
    options (teacher, cache, colearn) pick where assignments come from. Under torchrun,
    each process trains on its share of every batch (DDP) and rank 0 writes the run."""
    ctx = dist.setup(cfg.device)
    out = dist.on_main(ctx, lambda: run_dir.prepare(Path(cfg.out), resume, overwrite))
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        cfg = TrainConfig.from_dict({**ckpt["train_config"], "device": cfg.device, "workers": cfg.workers})
        if ckpt["state"].get("world", 1) != ctx.world:
            raise LadError(f"{out}: the run used {ckpt['state'].get('world', 1)} processes; resume it with as many "
                           f"(this is {ctx.world}), so that the batches and the sampler position match")
    device = ctx.device
    bf16 = use_bf16(device, cfg.amp)
    train_split, val_split = load_data(cfg)

    torch.manual_seed(cfg.seed)
    nets = {"student": new_detector(cfg.arch, len(train_split.categories), cfg.width, cfg.head_depth, cfg.weights,
                                    cfg.anchor_scale)}
    source = build_source(cfg, nets, train_split, device, bf16)
    for name, net in nets.items():
        if ctx.active:
            dist.convert_sync_batchnorm(net)
        nets[name] = net.to(device, memory_format=memory_format(device))
    if ckpt:
        for name, net in nets.items():
            net.load_state_dict(ckpt["nets"][name])
    models = {name: torch.nn.parallel.DistributedDataParallel(net, broadcast_buffers=False) if ctx.active else net
              for name, net in nets.items()}
    params = [p for net in nets.values() for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.base_lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    weights = LossWeights(box_weighting=cfg.box_weighting or source.box_weighting)

    views = parse_views(cfg.views, cfg.size, cfg.max_size)
    divisor = nets["student"].config.layout.size_divisor
    dataset = getattr(source, "wrap_dataset", lambda d: d)(DetectionDataset(train_split, views, divisor))
    sampler = ViewBatchSampler(dataset.shapes(), cfg.batch, cfg.seed, subset=getattr(source, "subset", None),
                               rank=ctx.rank, world=ctx.world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(divisor),
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=cfg.workers > 0)
    if not resume and ctx.is_main:  # written once the sources and views were accepted
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    state = {"epoch": 0, "iteration": 0, "batch_in_epoch": 0, "best_ap": -1.0, "val": None, "world": ctx.world}
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    metrics = run_dir.MetricsLog(out / "metrics.jsonl", ckpt["metrics_lines"] if ckpt else None) if ctx.is_main else None

    def save(name: str) -> None:
        if not ctx.is_main:
            return
        full = {**model_checkpoint(nets["student"], train_split, cfg), "train_config": cfg.to_dict(),
                "nets": {k: n.state_dict() for k, n in nets.items()}, "optimizer": optimizer.state_dict(),
                "state": state, "metrics_lines": metrics.lines}
        save_atomic(full, out / name)
        for peer in (k for k in nets if k != "student"):
            save_atomic({**model_checkpoint(nets[peer], train_split, cfg), "state": state}, out / f"{peer}_{name}")

    def log(record: dict) -> None:
        if metrics is not None:
            metrics.write(record)

    batches_per_epoch = len(sampler.local_plan(0))
    total = cfg.epochs * batches_per_epoch
    with progress_bar(disable=not ctx.is_main) as bar:
        task = bar.add_task(f"train {cfg.arch}", total=total, completed=state["iteration"], info="")
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            sampler.set_epoch(epoch, state["batch_in_epoch"])
            for net in nets.values():
                net.train()
            batches, waited, since = iter(loader), 0.0, time.perf_counter()
            while True:
                fetch_start = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                waited += time.perf_counter() - fetch_start
                lr = cfg.lr_at(state["iteration"], epoch)
                instances = int(batch.targets.valid.sum())
                try:
                    logged = train_step(models, source, batch.to(device), optimizer, params, weights, cfg.clip, lr, device,
                                        bf16, skippable=cfg.skip_nonfinite > 0)
                except NonFiniteLoss as exc:  # nothing was stepped: stop, or skip the batch within --skip-nonfinite
                    logged = None
                    state["skipped_nonfinite"] = state.get("skipped_nonfinite", 0) + 1
                    where = f"iteration {state['iteration'] + 1}: {exc}"
                    if state["skipped_nonfinite"] > cfg.skip_nonfinite:
                        budget = f", more than --skip-nonfinite {cfg.skip_nonfinite}" if cfg.skip_nonfinite else ""
                        last = out / "last.pt"
                        raise LadError(f"{where}{budget}; stopped, last good checkpoint: "
                                       f"{last if last.exists() else 'none saved yet'}") from None
                    console.print(f"[yellow]{where}: batch skipped ({state['skipped_nonfinite']} of --skip-nonfinite "
                                  f"{cfg.skip_nonfinite})")
                    log({"iteration": state["iteration"] + 1, "epoch": epoch + 1, "skipped_nonfinite": exc.term})
                state["iteration"] += 1
                state["batch_in_epoch"] += 1
                if logged is not None and (state["iteration"] % cfg.log_every == 0 or state["iteration"] == total):
                    means = dist.process_mean(torch.stack([v.float() for v in logged.values()])).tolist()
                    now = time.perf_counter()
                    record = {"iteration": state["iteration"], "epoch": epoch + 1, "lr": lr, **dict(zip(logged, means)),
                              "data_wait": round(waited / max(now - since, 1e-9), 4)}
                    waited, since = 0.0, now
                    log(record)
                    bar.update(task, info=_progress_info(record, instances, batch.padded_hw, device))
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs}")
                if cfg.save_every and state["iteration"] % cfg.save_every == 0:
                    save("last.pt")
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            improved = val_split is None  # without validation, the latest weights are the best known
            if val_split is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                state["val"] = validate(nets, val_split, cfg, ctx, bf16, state, log)
                improved = (state["val"]["AP"] or 0.0) > state["best_ap"]
                state["best_ap"] = max(state["best_ap"], state["val"]["AP"] or 0.0)
            save("last.pt")
            if improved:
                save("best.pt")
    if metrics is not None:
        metrics.close()
    return {"run": str(out), "epochs": cfg.epochs, "iterations": state["iteration"], "val": state["val"],
            "best_AP": state["best_ap"] if val_split is not None else None}


def train_step(models, source, batch, optimizer, params, weights, clip, lr, device, bf16,
               skippable: bool = False) -> dict[str, torch.Tensor]:
    """One iteration; returns detached scalars. One host sync, the non-finite check; the caller
    logs. `models`: the networks as called (DDP-wrapped under torchrun). `skippable`: a batch
    with a non-finite loss may be skipped (--skip-nonfinite), so keep what it would change."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    # A skipped batch must leave no trace, and its forward moves BatchNorm statistics. Without
    # --skip-nonfinite a non-finite loss ends the run, so the copies are not needed.
    norm_stats = [b for model in models.values() for m in model.modules()
                  if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for b in m.buffers()] if skippable else []
    norm_stats_before = [b.clone() for b in norm_stats]
    images = batch.images.contiguous(memory_format=memory_format(device))
    with autocast(device, bf16):
        preds = {name: model(images) for name, model in models.items()}
    student = getattr(models["student"], "module", models["student"])
    anchors, counts = student.anchors(batch.padded_hw, device)
    assigned = source(batch, preds, anchors, counts)
    losses = {k: torch.zeros((), device=device) for k in LOSS_KEYS}
    for pred in preds.values():
        for k, v in detection_loss(pred.cls_logits, pred.box_deltas, pred.iou_logits, anchors,
                                   assigned.matched_idxs, batch.targets, weights, dist.process_mean).items():
            losses[k] = losses[k] + v
    losses.update(getattr(source, "extra_losses", lambda *a: {})(batch, preds, assigned, anchors))
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    # One host sync per step (as GradScaler's). Averaged over processes (a NaN anywhere is a NaN
    # everywhere), so that under DDP every process skips or stops at the same step.
    checked = dist.process_mean(torch.stack([v.detach().float() for v in (*losses.values(), loss, grad_norm)]))
    if not bool(torch.isfinite(checked).all()):
        bad = int((~torch.isfinite(checked)).nonzero()[0])
        optimizer.zero_grad(set_to_none=True)
        for b, before in zip(norm_stats, norm_stats_before):
            b.copy_(before)
        raise NonFiniteLoss([*losses, "loss", "grad_norm"][bad], checked[bad].item())
    optimizer.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}, **assigned.stats}


def validate(nets, split: CocoSplit, cfg: TrainConfig, ctx: dist.Dist, bf16: bool, state: dict, log) -> dict:
    """COCO metrics of every network on the val split (each process predicts its share of
    the images, rank 0 scores them); logs one record per network; returns the student's."""
    view = View("orig", cfg.size, cfg.max_size, False)
    result = None
    for name, net in nets.items():
        start = time.perf_counter()
        m = dist.broadcast(ctx, evaluate_sharded(net, split, view, cfg.batch, ctx, cfg.workers, bf16))
        record = {"epoch": state["epoch"], "iteration": state["iteration"],
                  **({} if name == "student" else {"network": name}),
                  **{k: v for k, v in m.items() if k != "per_class"}, "eval_seconds": round(time.perf_counter() - start, 2)}
        log(record)
        console.print(f"epoch {state['epoch']} {name}: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}")
        result = result or m  # the student's
    return result


def _progress_info(record: dict, instances: int, hw: tuple[int, int], device: torch.device) -> str:
    mem = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G " if device.type == "cuda" else ""
    terms = " ".join(f"{k[5:]} {record[k]:.3f}" for k in LOSS_KEYS)
    return f"{mem}loss {record['loss']:.3f} ({terms}) inst {instances} {hw[0]}x{hw[1]}"
