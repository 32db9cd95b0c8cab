"""The one training loop. Modes differ only in where the assignment comes from (sources.py)."""
import json
import time
from pathlib import Path

import torch

from ..data.coco import CocoSplit, load_split, locate_split
from ..data.dataset import Collate, DetectionDataset
from ..data.sampler import ViewBatchSampler
from ..data.views import View, parse_views
from ..errors import LadError
from ..evaluate import coco_metrics, predict
from ..losses import LossWeights, detection_loss
from ..progress import progress_bar
from ..runtime import autocast, console, resolve_device, use_bf16
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
    options (teacher, cache, colearn) pick where assignments come from."""
    out = run_dir.prepare(Path(cfg.out), resume, overwrite)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        cfg = TrainConfig.from_dict({**ckpt["train_config"], "device": cfg.device, "workers": cfg.workers})
    device = resolve_device(cfg.device)
    bf16 = use_bf16(device, cfg.amp)
    train_split, val_split = load_data(cfg)
    if not resume:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    nets = {"student": new_detector(cfg.arch, len(train_split.categories), cfg.width, cfg.head_depth, cfg.weights,
                                    cfg.anchor_scale)}
    source = build_source(cfg, nets, train_split, device, bf16)
    for net in nets.values():
        net.to(device)
    params = [p for net in nets.values() for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.base_lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    weights = LossWeights(box_weighting=cfg.box_weighting or source.box_weighting)

    views = parse_views(cfg.views, cfg.size, cfg.max_size)
    divisor = nets["student"].config.layout.size_divisor
    dataset = getattr(source, "wrap_dataset", lambda d: d)(DetectionDataset(train_split, views, divisor))
    sampler = ViewBatchSampler(dataset.shapes(), cfg.batch, cfg.seed, subset=getattr(source, "subset", None))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(divisor),
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=cfg.workers > 0)
    state = {"epoch": 0, "iteration": 0, "batch_in_epoch": 0, "best_ap": -1.0, "val": None}
    if ckpt:
        for name, net in nets.items():
            net.load_state_dict(ckpt["nets"][name])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    metrics = run_dir.MetricsLog(out / "metrics.jsonl", ckpt["metrics_lines"] if ckpt else None)

    def save(name: str) -> None:
        full = {**model_checkpoint(nets["student"], train_split, cfg), "train_config": cfg.to_dict(),
                "nets": {k: n.state_dict() for k, n in nets.items()}, "optimizer": optimizer.state_dict(),
                "state": state, "metrics_lines": metrics.lines}
        save_atomic(full, out / name)
        for peer in (k for k in nets if k != "student"):
            save_atomic({**model_checkpoint(nets[peer], train_split, cfg), "state": state}, out / f"{peer}_{name}")

    batches_per_epoch = len(sampler.plan(0))
    total = cfg.epochs * batches_per_epoch
    with progress_bar() as bar:
        task = bar.add_task(f"train {cfg.arch}", total=total, completed=state["iteration"], info="")
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            sampler.set_epoch(epoch, state["batch_in_epoch"])
            for net in nets.values():
                net.train()
            for batch in loader:
                lr = cfg.lr_at(state["iteration"], epoch)
                instances = int(batch.targets.valid.sum())
                logged = train_step(nets, source, batch.to(device), optimizer, params, weights, cfg.clip, lr, device, bf16)
                state["iteration"] += 1
                state["batch_in_epoch"] += 1
                if state["iteration"] % cfg.log_every == 0 or state["iteration"] == total:
                    record = {"iteration": state["iteration"], "epoch": epoch + 1, "lr": lr,
                              **{k: float(v) for k, v in logged.items()}}
                    metrics.write(record)
                    bar.update(task, info=_progress_info(record, instances, batch.padded_hw, device))
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs}")
                if cfg.save_every and state["iteration"] % cfg.save_every == 0:
                    save("last.pt")
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            improved = val_split is None  # without validation, the latest weights are the best known
            if val_split is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                state["val"] = validate(nets, val_split, cfg, device, bf16, state, metrics)
                improved = (state["val"]["AP"] or 0.0) > state["best_ap"]
                state["best_ap"] = max(state["best_ap"], state["val"]["AP"] or 0.0)
            save("last.pt")
            if improved:
                save("best.pt")
    metrics.close()
    return {"run": str(out), "epochs": cfg.epochs, "iterations": state["iteration"], "val": state["val"],
            "best_AP": state["best_ap"] if val_split is not None else None}


def train_step(nets, source, batch, optimizer, params, weights, clip, lr, device, bf16) -> dict[str, torch.Tensor]:
    """One iteration; returns detached scalars (no host sync here: the caller logs)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(device, bf16):
        preds = {name: net(batch.images) for name, net in nets.items()}
    anchors, counts = nets["student"].anchors(batch.padded_hw, device)
    assigned = source(batch, preds, anchors, counts)
    losses = {k: torch.zeros((), device=device) for k in LOSS_KEYS}
    for pred in preds.values():
        for k, v in detection_loss(pred.cls_logits, pred.box_deltas, pred.iou_logits, anchors,
                                   assigned.matched_idxs, batch.targets, weights).items():
            losses[k] = losses[k] + v
    losses.update(getattr(source, "extra_losses", lambda *a: {})(batch, preds, assigned, anchors))
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}, **assigned.stats}


def validate(nets, split: CocoSplit, cfg: TrainConfig, device, bf16: bool, state: dict, metrics: run_dir.MetricsLog) -> dict:
    """COCO metrics of every network on the val split; logs one record per network."""
    view = View("orig", cfg.size, cfg.max_size, False)
    result = None
    for name, net in nets.items():
        start = time.perf_counter()
        m = coco_metrics(split, predict(net, split, view, cfg.batch, device, cfg.workers, bf16=bf16))
        record = {"epoch": state["epoch"], "iteration": state["iteration"],
                  **({} if name == "student" else {"network": name}),
                  **{k: v for k, v in m.items() if k != "per_class"}, "eval_seconds": round(time.perf_counter() - start, 2)}
        metrics.write(record)
        console.print(f"epoch {state['epoch']} {name}: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}")
        result = result or m  # the student's
    return result


def _progress_info(record: dict, instances: int, hw: tuple[int, int], device: torch.device) -> str:
    mem = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G " if device.type == "cuda" else ""
    terms = " ".join(f"{k[5:]} {record[k]:.3f}" for k in LOSS_KEYS)
    return f"{mem}loss {record['loss']:.3f} ({terms}) inst {instances} {hw[0]}x{hw[1]}"
