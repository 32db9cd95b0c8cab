"""One training iteration and the validation pass between epochs."""
import time

import torch

from .. import dist
from ..data.coco import CocoSplit
from ..data.views import View
from ..distill.sources import AssignmentSource
from ..errors import NonFiniteLoss
from ..losses import LossWeights
from ..runtime import autocast, console, memory_format
from .config import TrainConfig
from .evaluate import ap_text, evaluate_sharded

LOSS_KEYS = ("loss_cls", "loss_box", "loss_iou")


def train_step(models, source: AssignmentSource, batch, optimizer, params, weights: LossWeights, clip: float, lr: float,
               device: torch.device, bf16: bool, skippable: bool = False) -> dict[str, torch.Tensor]:
    """One iteration; returns detached scalars. One host sync, the non-finite check; the caller
    logs. `models`: the networks as called (DDP-wrapped under torchrun). `skippable`: a batch
    with a non-finite loss may be skipped (--skip-nonfinite), so keep what it would change."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    # A skipped batch must leave no trace, and its forward moves BatchNorm statistics. Without
    # --skip-nonfinite a non-finite loss ends the run, so the copies are not needed.
    norm_stats = [b for model in models.values() for m in model.modules()
                  if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm)) and m.training
                  for b in m.buffers()] if skippable else []
    norm_stats_before = [b.clone() for b in norm_stats]
    images = batch.images.contiguous(memory_format=memory_format(device))
    with autocast(device, bf16):
        preds = {name: model(images) for name, model in models.items()}
    student = getattr(models["student"], "module", models["student"])
    anchors, counts = student.anchors(batch.padded_hw, device)
    assigned = source.assign(batch, preds, anchors, counts)
    losses = {k: torch.zeros((), device=device) for k in LOSS_KEYS}
    for pred in preds.values():
        for k, v in assigned.assigner.loss(pred, anchors, assigned.matched_idxs, batch.targets, weights, dist.process_mean,
                                           assigned.soft_target).items():
            losses[k] = losses[k] + v
    losses.update(source.extra_losses(batch, preds, assigned, anchors))
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    # One host sync per step (as GradScaler's). Averaged over processes (a NaN anywhere is a NaN
    # everywhere), so that under DDP every process skips or stops at the same step.
    # A teacher's non-finite outputs (`assigned.checks`) stop the step too: they would assign background silently.
    checked = dist.process_mean(torch.stack([v.detach().float() for v in (*losses.values(), loss, grad_norm,
                                                                          *assigned.checks.values())]))
    if not bool(torch.isfinite(checked).all()):
        bad = int((~torch.isfinite(checked)).nonzero()[0])
        optimizer.zero_grad(set_to_none=True)
        for b, before in zip(norm_stats, norm_stats_before):
            b.copy_(before)
        raise NonFiniteLoss([*losses, "loss", "grad_norm", *assigned.checks][bad], checked[bad].item())
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
        console.print(f"epoch {state['epoch']} {name}: AP {ap_text(m['AP'])}  AP50 {ap_text(m['AP50'])}")  # None: no GT
        result = result or m  # the student's
    return result


def progress_info(record: dict, instances: int, hw: tuple[int, int], device: torch.device) -> str:
    mem = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G " if device.type == "cuda" else ""
    terms = " ".join(f"{k[5:]} {record[k]:.3f}" for k in LOSS_KEYS)
    return f"{mem}loss {record['loss']:.3f} ({terms}) inst {instances} {hw[0]}x{hw[1]}"
