"""torch.distributed under torchrun: one process per device, nccl on CUDA, gloo on the CPU.

Every command calls `setup` first. Without torchrun (WORLD_SIZE unset) it is a one-process
context and every helper here is a no-op, so the same code runs either way. Under torchrun
the process group exists even for one process, so that `--nproc-per-node 1` runs the very
code N processes run (DDP, synchronised BatchNorm, nccl).
"""
import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from .errors import LadError
from .runtime import console, resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    distributed: bool = False  # launched by torchrun: a process group exists


def setup(device_name: str) -> Dist:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and this
    process's device (cuda:LOCAL_RANK under torchrun on CUDA). Only rank 0 prints progress."""
    device = resolve_device(device_name)
    if "WORLD_SIZE" not in os.environ:
        return Dist(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None and device.index != 0:
            raise LadError("under torchrun, use --device cuda (or auto): each process takes cuda:LOCAL_RANK")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(torch_dist.destroy_process_group)
    rank = torch_dist.get_rank()
    if rank != 0:
        console.quiet = True
    return Dist(rank, torch_dist.get_world_size(), device, distributed=True)


def process_mean(t: Tensor) -> Tensor:
    """The mean of `t` over processes (a detached copy; `t` itself when not distributed).
    Loss normalisers go through this so the loss does not depend on the process count."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return t
    t = t.detach().clone()
    torch_dist.all_reduce(t)
    return t / torch_dist.get_world_size()


def barrier(ctx: Dist) -> None:
    if ctx.distributed:
        torch_dist.barrier()


def gather(ctx: Dist, obj) -> list | None:
    """Every process's `obj` on rank 0 (in rank order), None elsewhere."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world if ctx.is_main else None
    torch_dist.gather_object(obj, out, dst=0)
    return out


def broadcast(ctx: Dist, obj):
    """Rank 0's `obj` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(ctx: Dist, fn):
    """Run `fn` on rank 0 only and hand its result, or its LadError, to every process, so
    that a refusal (existing output, bad input) stops all ranks with the same message."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except LadError as exc:
            error = str(exc)
    result, error = broadcast(ctx, (result, error))
    if error is not None:
        raise LadError(error)
    return result


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over every process,
    so N processes train the same network as one process with the same global batch (the
    losses average their normalisers the same way). Works on gloo (CPU) and nccl; a process
    with a different share of images weighs its statistics by its pixel count. Eval mode and
    frozen layers use the running statistics, as BatchNorm2d."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and torch_dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_gather  # differentiable

        x32 = x.float()
        var, mean = torch.var_mean(x32, dim=(0, 2, 3), unbiased=False)
        count = torch.full_like(mean, x.numel() / x.shape[1])
        stats = all_gather(torch.stack([count, mean, var]))  # per process: (3, C)
        counts = torch.stack([s[0] for s in stats])  # (W, C)
        means = torch.stack([s[1] for s in stats])
        variances = torch.stack([s[2] for s in stats])
        total = counts.sum(0)
        g_mean = (counts * means).sum(0) / total
        g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total  # Chan's parallel combination
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(g_mean.detach(), self.momentum)
            self.running_var.lerp_(g_var.detach() * total / (total - 1).clamp(min=1), self.momentum)
        scale = self.weight.float() * torch.rsqrt(g_var + self.eps)
        shift = self.bias.float() - g_mean * scale
        return (x32 * scale[:, None, None] + shift[:, None, None]).to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for SyncBatchNorm in place (same parameters, buffers and mode)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            for p_new, p_old in zip(sync.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(module, name, sync.to(child.weight.device))
        else:
            convert_sync_batchnorm(child)
    return module
