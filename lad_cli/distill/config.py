"""The configuration of `lad assign` (plain data: the CLI imports it to show its defaults)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class AssignConfig:
    """What `lad assign` runs: the teacher, the split, the views (at the teacher's size) and
    where the assignments go (`cache`; None: statistics only). The defaults are the CLI's."""

    teacher: str
    data: str | None = None
    split: str = "train"
    ann: str | None = None
    images: str | None = None
    cache: str | None = None
    views: str = "orig,flip"
    batch: int = 8
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    resume: bool = False
    overwrite: bool = False
    shard_entries: int = 4096  # entries per shard file, the unit of resumption
    assigner: str | None = None  # paa or tal; None: the one the teacher trained with
    strict_boxes: bool = False  # refuse boxes without area in their image or overrunning it (else dropped / clipped)
