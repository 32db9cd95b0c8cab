"""Counting the operations that make the host wait for the device.

On CUDA, reading a value (`.item()`, `bool()`), a data-dependent shape (`nonzero`, boolean
indexing, `unique`, `repeat_interleave` without `output_size`) or a copy to the host stops
the CPU until the GPU has caught up. `SyncCounter` counts those operations as they are
dispatched, on any device, so a CPU run tells how many syncs a CUDA run would make (copies
to the host are only seen as such on CUDA).
"""
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {"nonzero", "_local_scalar_dense", "is_nonzero", "masked_select", "unique_dim", "_unique", "_unique2",
           "unique_consecutive", "equal", "allclose", "nonzero_numpy", "masked_scatter"}


class SyncCounter(TorchDispatchMode):
    """`with SyncCounter() as c: ...`; then `c.total` and `c.by_op` (op name -> count)."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in _ALWAYS or _boolean_index(name, args) or _repeat_without_size(name, kwargs) or _to_host(func, args, kwargs):
            self.by_op[name] += 1
        return func(*args, **kwargs)


def _boolean_index(name: str, args) -> bool:
    if name not in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _repeat_without_size(name: str, kwargs) -> bool:
    return name == "repeat_interleave" and kwargs.get("output_size") is None


def _to_host(func, args, kwargs) -> bool:
    device = kwargs.get("device")
    return (func._schema.name in ("aten::_to_copy",) and device is not None and torch.device(device).type == "cpu"
            and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu")
