"""Device choice, mixed precision, and the stderr console every command reports on."""
import contextlib

import torch
from rich.console import Console

from .errors import LadError

console = Console(stderr=True, highlight=False)


def resolve_device(name: str) -> torch.device:
    """"auto" = CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LadError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LadError(f"--device {name}: CUDA is not available on this machine")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed); full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
