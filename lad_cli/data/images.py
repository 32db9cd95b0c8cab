"""Images without annotations (`lad predict`): files, folders and glob patterns, each image
checked before any work, read through the same view and collation as an annotated split."""
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import LadError
from ..outputs import is_predict_folder
from ..runtime import console
from .dataset import Sample, bomb_message, decode_image
from .views import View, apply_view, padded_hw, resized_hw

# What a folder or a pattern counts as images; a file named on its own may be any format PIL reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageFile:
    path: Path
    name: str  # how outputs name it: the path below the folder or pattern root, or the file's name
    width: int
    height: int


def find_images(sources: list[str]) -> list[ImageFile]:
    """Every image the sources name, in order (a folder's and a pattern's sorted by path), each
    once. A source that names nothing, a folder without images or a file that is not an image
    is a LadError naming it."""
    found: dict[Path, tuple[Path, str]] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise LadError(f"{path}: no image in this folder ({', '.join(IMAGE_SUFFIXES)})")
            named = [(p, p.name) for p in files]
        elif path.is_file():
            named = [(path, path.name)]
        elif glob.has_magic(source):
            files = sorted(Path(p) for p in glob.glob(source, recursive=True))
            files = [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            root = _pattern_root(source)
            files = _outside_predict_outputs(files, root, source)
            if not files:
                raise LadError(f"{source}: the pattern matches no image")
            named = [(p, str(p.relative_to(root)) if p.is_relative_to(root) else p.name) for p in files]
        else:
            raise LadError(f"{source}: no such file or folder")
        for p, name in named:
            found.setdefault(p.resolve(), (p, name))
    return [_image_file(p, name) for p, name in found.values()]


def _outside_predict_outputs(files: list[Path], root: Path, source: str) -> list[Path]:
    """The files not inside a `lad predict` output folder below the pattern's root (its
    drawings, read back by a recursive pattern over the folder it was written into); one
    line says how many were left out. A pattern rooted in such a folder takes it as asked."""
    known: dict[Path, bool] = {}

    def inside(path: Path) -> bool:
        for folder in path.parents:
            if folder == root or not folder.is_relative_to(root):
                return False
            if folder not in known:
                known[folder] = is_predict_folder(folder)
            if known[folder]:
                return True
        return False

    kept = [p for p in files if not inside(p)]
    if len(kept) < len(files):
        folders = sorted(str(f) for f, own in known.items() if own)
        console.print(f"{source}: {len(files) - len(kept)} image(s) in lad predict output folders left out "
                      f"({', '.join(folders)})", markup=False, emoji=False, soft_wrap=True)
    return kept


def _pattern_root(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading components without wildcards."""
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def _image_file(path: Path, name: str) -> ImageFile:
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except Image.DecompressionBombError:
        raise LadError(bomb_message(path)) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise LadError(f"{path}: not a readable image") from None
    return ImageFile(path, name, width, height)


class ImageFolder(torch.utils.data.Dataset):
    """Unannotated images through one view, indexed by (image index, view id) as
    `DetectionDataset`, so that the same sampler, loader and inference serve both."""

    def __init__(self, images: list[ImageFile], view: View, size_divisor: int):
        self.images = images
        self.views = [view]
        self.size_divisor = size_divisor

    def __len__(self) -> int:
        return len(self.images)

    def original_hw(self, index: int) -> tuple[int, int]:
        return self.images[index].height, self.images[index].width

    def shapes(self) -> list[list[tuple[int, int]]]:
        return [[padded_hw(*resized_hw(im.height, im.width, self.views[0]), self.size_divisor)] for im in self.images]

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, view_id = key
        image = decode_image(self.images[index].path)
        none = np.zeros((0, 4), np.float32)
        image, boxes, crowd = apply_view(image, none, none, self.views[view_id])
        return Sample(image, boxes, torch.zeros(0, dtype=torch.int64), crowd, index, view_id)
