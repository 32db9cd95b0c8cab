"""The DataLoader of every pass over a split: training, assignment, evaluation."""
import torch

from .dataset import Collate


def make_loader(dataset, batch_sampler, size_divisor: int, workers: int, device: torch.device,
                persistent: bool = False) -> torch.utils.data.DataLoader:
    """Batches of one padded shape each, as `batch_sampler` plans them, read and collated in
    `workers` processes and pinned for a non-blocking copy when the device is CUDA.
    `persistent`: keep the workers between epochs (training). A dataset whose workers must not
    be forked names how to start them (`worker_start_method`: a cache on object storage, whose
    client does not survive a fork, starts them with "spawn")."""
    start = getattr(dataset, "worker_start_method", None) if workers > 0 else None
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=Collate(size_divisor),
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       persistent_workers=persistent and workers > 0, multiprocessing_context=start)
