"""Device choice, mixed precision, and the stderr console every command reports on."""
import contextlib

import torch
from rich.console import Console

from .choices import AMP_MODES, device_error
from .errors import LadError

console = Console(stderr=True, highlight=False)


def resolve_device(name: str) -> torch.device:
    """"auto" = CUDA when present, else CPU."""
    if error := device_error(name):
        raise LadError(error)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LadError(f"--device {name}: CUDA is not available on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise LadError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def use_bf16(device: torch.device, amp: str = "auto") -> bool:
    """auto: bf16 on CUDA, and on CPUs with bf16 matrix units (AMX / AVX512-BF16), where it
    halves the step time; off: full float32 everywhere."""
    if amp not in AMP_MODES:
        raise LadError(f"unknown --amp {amp!r}: use {', '.join(AMP_MODES)}")
    if amp == "off":
        return False
    if amp == "bf16" or device.type == "cuda":
        return True
    return cpu_has_bf16_units()


def cpu_has_bf16_units() -> bool:
    """AMX tiles or AVX512-BF16, as torch's public `torch.cpu.get_capabilities()` reports them.
    A torch without that function (older releases) reports none: float32, which is never wrong."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("amx_tile", False) or capabilities.get("avx512_bf16", False))


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast (no loss scaling needed) or full precision; losses are computed in float32."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels-last on CUDA, where cuDNN's bf16 convolutions run faster in NHWC; the CPU
    keeps the default layout (the same code runs either way; a test checks both agree)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format
