"""(image, view) -> tensors, and batches of one padded shape."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import LadError
from ..structures import Targets
from .coco import CocoSplit, ImageRecord
from .views import View, apply_view, padded_hw, resized_hw


@dataclass
class Sample:
    image: Tensor  # (3, h, w) float32, normalised, unpadded
    boxes: Tensor  # (M, 4) in view pixels
    labels: Tensor  # (M,)
    crowd: Tensor  # (K, 4)
    index: int  # position in the split
    view_id: int
    matched_idxs: Tensor | None = None  # (A,) int64 when read from a cache
    class_target: Tensor | None = None  # (A,) float32: the teacher's alignment, from a cache that stores it


@dataclass
class Batch:
    """N samples of one padded shape: images (N, 3, H, W); indices (N,) int64;
    image_hw: each image's unpadded size; matched_idxs (N, A) when cached, class_target (N, A)
    when the cache stores the teacher's alignment."""

    images: Tensor
    targets: Targets
    indices: Tensor
    image_hw: list[tuple[int, int]]
    matched_idxs: Tensor | None = None
    class_target: Tensor | None = None

    @property
    def padded_hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def pin_memory(self) -> "Batch":
        pinned = [None if t is None else t.pin_memory() for t in (self.matched_idxs, self.class_target)]
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.indices, self.image_hw, *pinned)

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        moved = [None if t is None else t.to(device, non_blocking=nb) for t in (self.matched_idxs, self.class_target)]
        return Batch(self.images.to(device, non_blocking=nb), self.targets.to(device, nb), self.indices, self.image_hw,
                     *moved)


# PIL's integer grey modes wider than 8 bits: 16-bit PNGs and TIFFs (I;16*), and "I" (32-bit),
# which older Pillows give 16-bit PNGs; PIL's own convert("RGB") saturates them to white.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(path: Path, where: str = "") -> Tensor:
    """uint8 (3, H, W) RGB: the stored pixels (no EXIF rotation, as COCO's own tools), grey,
    palette and RGBA images converted, 16-bit grey scaled to 8 bits. The one place images
    are decoded (training, eval, assign, predict, drawings). An unreadable file, or one over
    PIL's decompression-bomb limit, is a LadError naming it."""
    try:
        with Image.open(path) as im:
            return torch.from_numpy(_rgb_pixels(im)).permute(2, 0, 1)
    except Image.DecompressionBombError:
        raise LadError(bomb_message(path) + where) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise LadError(f"{path}: unreadable image{where}") from None


def bomb_message(path: Path) -> str:
    return (f"{path}: image of more than {2 * Image.MAX_IMAGE_PIXELS} pixels, PIL's decompression-bomb limit "
            "(twice PIL.Image.MAX_IMAGE_PIXELS); downscale it")


def _rgb_pixels(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8. 16-bit grey keeps its contrast with one fixed scale, the top 8 of its
    16 bits, as torchvision's uint16 -> uint8 conversion and OpenCV's 8-bit reading do:
    the same stored value gives the same pixel in every image (a per-image stretch would not)."""
    if im.mode not in WIDE_GREY_MODES:
        return np.array(im.convert("RGB"))
    grey = (np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def size_mismatch(split: CocoSplit, rec: ImageRecord, width: int, height: int) -> LadError:
    return LadError(f"{rec.path}: image is {width}x{height} but {split.ann_file.name} says {rec.width}x{rec.height} "
                    f"(image id {rec.id})")


def check_image_files(split: CocoSplit) -> None:
    """Every image of the split opens and has the size its annotation says, read from the
    file's header (nothing is decoded), so that a bad image stops a run before its first
    step rather than when an epoch or a validation reaches it."""
    for rec in split.images:
        try:
            with Image.open(rec.path) as im:
                width, height = im.size
        except Image.DecompressionBombError:
            raise LadError(bomb_message(rec.path) + f" (image id {rec.id})") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise LadError(f"{rec.path}: unreadable image (image id {rec.id})") from None
        if (height, width) != (rec.height, rec.width):
            raise size_mismatch(split, rec, width, height)


class DetectionDataset(torch.utils.data.Dataset):
    """Indexed by (image index, view id)."""

    def __init__(self, split: CocoSplit, views: list[View], size_divisor: int):
        self.split = split
        self.views = views
        self.size_divisor = size_divisor

    def __len__(self) -> int:
        return len(self.split.images)

    def padded_shape(self, index: int, view_id: int) -> tuple[int, int]:
        rec = self.split.images[index]
        return padded_hw(*resized_hw(rec.height, rec.width, self.views[view_id]), self.size_divisor)

    def shapes(self) -> list[list[tuple[int, int]]]:
        """Padded shape of every (image, view), from the annotation sizes alone."""
        return [[self.padded_shape(i, v) for v in range(len(self.views))] for i in range(len(self))]

    def entry_shapes(self) -> np.ndarray:
        """(images x views, 2) int32: the padded shapes in cache-entry order (image x V + view)."""
        return np.array(self.shapes(), dtype=np.int32).reshape(-1, 2)

    def original_hw(self, index: int) -> tuple[int, int]:
        rec = self.split.images[index]
        return rec.height, rec.width

    def read_image(self, index: int) -> Tensor:
        rec = self.split.images[index]
        image = decode_image(rec.path, f" (image id {rec.id})")
        if tuple(image.shape[-2:]) != (rec.height, rec.width):
            raise size_mismatch(self.split, rec, image.shape[-1], image.shape[-2])
        return image

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, view_id = key
        rec = self.split.images[index]
        image, boxes, crowd = apply_view(self.read_image(index), rec.boxes, rec.crowd, self.views[view_id])
        return Sample(image, boxes, torch.from_numpy(rec.labels), crowd, index, view_id)


def collate(samples: list[Sample], size_divisor: int) -> Batch:
    h = max(s.image.shape[1] for s in samples)
    w = max(s.image.shape[2] for s in samples)
    ph, pw = padded_hw(h, w, size_divisor)
    images = torch.zeros(len(samples), 3, ph, pw)
    for i, s in enumerate(samples):
        images[i, :, : s.image.shape[1], : s.image.shape[2]] = s.image
    cached, aligned = [s.matched_idxs for s in samples], [s.class_target for s in samples]
    return Batch(
        images=images,
        targets=Targets.from_lists([s.boxes for s in samples], [s.labels for s in samples], [s.crowd for s in samples]),
        indices=torch.tensor([s.index for s in samples]),
        image_hw=[tuple(s.image.shape[1:]) for s in samples],
        matched_idxs=None if cached[0] is None else torch.stack(cached),
        class_target=None if aligned[0] is None else torch.stack(aligned),
    )


class Collate:
    """Picklable collate_fn for worker processes."""

    def __init__(self, size_divisor: int):
        self.size_divisor = size_divisor

    def __call__(self, samples: list[Sample]) -> Batch:
        return collate(samples, self.size_divisor)
