"""Torch files read safely: loaded without running code, refused when they hold NaN or inf.
(Writing is `lad_cli.outputs`.)"""
import re
from pathlib import Path

import torch

from .errors import LadError


def read_torch_file(path: Path, kind: str, expected: str):
    """The object in a torch file, loaded with `weights_only=True`: tensors and plain data
    only, so a file from someone else cannot run code while it is read (a pickle that would
    is refused, naming what it tried to call). Errors name the file as `kind` ("checkpoint")
    and what it should have been (`expected`: "lad checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise LadError(f"{path}: {kind} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(exc)) if "Weights only load failed" in str(exc) else None
        if blocked:
            raise LadError(f"{path}: refused: the {kind} holds objects other than tensors and plain data "
                           f"({blocked.group(1)}), which could run code when loaded") from None
        raise LadError(f"{path}: unreadable {kind}, truncated or not a {expected} ({type(exc).__name__})") from None
    where = non_finite(obj)
    if where is not None:
        raise LadError(f"{path}: the {kind} holds NaN or inf values (in {where})")
    return obj


def non_finite(obj) -> str | None:
    """The key path of the first floating tensor with a NaN or inf inside nested dicts, lists
    and tuples; None when all are finite. (Plain floats are settings, such as `--clip inf`.)"""
    stack = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
                return where or "the tensor"
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
        stack += reversed([(f"{where}.{key}" if where else str(key), item) for key, item in items])
    return None
