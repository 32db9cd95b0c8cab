"""The configuration of `lad export` (plain data: the CLI imports it to show its defaults)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class ExportConfig:
    """What `lad export` writes: the checkpoint's detector as one graph in `format`, for a fixed
    padded input `size` (H, W) or, None, any multiple of 128; `check`: a dataset folder whose
    `check_split` the exported file and the eager network both score (AP, parity)."""

    checkpoint: str
    out: str
    format: str = "onnx"
    size: tuple[int, int] | None = None
    opset: int = 17
    check: str | None = None
    check_split: str = "val"
    overwrite: bool = False
