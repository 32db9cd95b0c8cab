"""Procedural COCO-format detection dataset: coloured shapes on cluttered backgrounds.

It is the project's embedded default dataset, so demos and tests need no downloads.
Every image is rendered from its own RNG seeded by (seed, split, index), so an image
never depends on how many images come before it, and the output is byte-identical
for the same arguments.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ..outputs import DATASET_MARK

# Non-contiguous ids on purpose: consumers must map category ids to class indices.
CATEGORIES: list[dict] = [
    {"id": cid, "name": name, "supercategory": "shape"}
    for cid, name in zip([1, 2, 4, 5, 7, 9], ["disc", "square", "triangle", "star", "ring", "cross"])
]

CLASS_HUE = {c["id"]: k / len(CATEGORIES) for k, c in enumerate(CATEGORIES)}

# --- difficulty knobs ---------------------------------------------------------------
MIN_SIDE, MAX_SIDE = 128, 256  # image sides are drawn independently, so the aspect ratio varies
MIN_SIZE = 16  # px, long extent of the smallest object; tiny objects are the hardest to classify
MAX_SIZE_FRAC = 0.8  # long extent of the largest object relative to the short image side
MAX_STRETCH = 1.6  # aspect stretch of a shape; much more and a disc or square loses its identity
COUNT_WEIGHTS = (12, 22, 24, 17, 10, 7, 5, 3)  # relative odds of 1..8 objects, skewed to 2-4
MAX_OBJECTS = len(COUNT_WEIGHTS)
MAX_BOX_IOU = 0.5  # a new object may not overlap an earlier box more than this
MAX_HIDDEN = 0.5  # ... nor hide more than this fraction of an earlier object's pixels
MAX_TRUNCATION = 0.3  # fraction of an object's extent that may fall outside the image
# Each class has its own hue (as real classes have typical colours), jittered, with random
# saturation and value; the background, distractors and the other classes can come close.
# With colours independent of the class, a detector trained from scratch for minutes on
# 2 CPU cores stayed below AP 0.1; with them it reaches about 0.45.
HUE_JITTER = 0.06  # fraction of the colour wheel; classes sit 1/6 apart
SATURATION, VALUE = (0.6, 1.0), (0.55, 1.0)
BLOTCH_AMPLITUDE = 30.0  # strength of the low-frequency colour noise in the background
DISTRACTORS = (2, 8)  # range of unlabelled lines, scribbles and blobs per image
STRIPE_PATCHES = (0, 1)  # range of striped background patches per image
NOISE_STD = 4.0  # per-pixel Gaussian noise, applied last to everything
NEGATIVE_FRAC = 0.04  # images without any object
CROWD_FRAC = 0.04  # images with one iscrowd=1 cluster of tiny shapes
CROWD_SHAPES = (12, 30)  # number of tiny shapes in a crowd cluster
SUPERSAMPLE = 2  # masks are drawn at this scale and averaged down, giving anti-aliased edges


def _ring_points(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + np.arange(n) * 2 * math.pi / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star_points() -> np.ndarray:
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.4)
    return _ring_points(10) * radii[:, None]


def _cross_points() -> np.ndarray:
    a = 0.33  # half width of an arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
                     (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=float)


# Unit outlines in [-1, 1]^2 as (polygon, fill) pairs; fill 0 cuts a hole into the mask.
UNIT_SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "disc": [(_ring_points(48), 255)],
    "square": [(_ring_points(4, math.sqrt(2), math.pi / 4), 255)],
    "triangle": [(_ring_points(3), 255)],
    "star": [(_star_points(), 255)],
    "ring": [(_ring_points(48), 255), (_ring_points(48, 0.55), 0)],
    "cross": [(_cross_points(), 255)],
}


@dataclass
class Shape:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, exclusive end
    alpha: np.ndarray  # float32 coverage in [0, 1] over the box
    category_id: int
    iscrowd: int
    colour: np.ndarray | None = None


def shape_polygons(rng: np.random.Generator, name: str, size: float, cx: float, cy: float
                   ) -> list[tuple[np.ndarray, int]]:
    """Outline of one stretched, rotated shape whose long extent is `size` pixels."""
    stretch = rng.uniform(1.0, MAX_STRETCH)
    scale = np.array([1.0, 1.0 / stretch]) * size / 2
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return [((unit * scale) @ rotation.T + (cx, cy), fill) for unit, fill in UNIT_SHAPES[name]]


def rasterise(polygons: list[tuple[np.ndarray, int]], width: int, height: int
              ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Anti-aliased coverage of the polygons, cropped to its drawn extent inside the image."""
    points = np.concatenate([p for p, _ in polygons])
    lo, hi = points.min(axis=0), points.max(axis=0)
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(math.ceil(hi[0]) + 1, width), min(math.ceil(hi[1]) + 1, height)
    inside = max(x1 - x0, 0) * max(y1 - y0, 0)
    if inside < (1 - MAX_TRUNCATION) * (hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1):
        return None
    mask = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE))
    draw = ImageDraw.Draw(mask)
    for polygon, fill in polygons:
        draw.polygon([tuple(p) for p in (polygon - (x0, y0)) * SUPERSAMPLE], fill=fill)
    alpha = np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32) / 255
    cols, rows = np.flatnonzero(alpha.any(axis=0)), np.flatnonzero(alpha.any(axis=1))
    if len(cols) < 2 or len(rows) < 2:
        return None
    box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
    return box, alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


class Layout:
    """Tracks which object owns each pixel, to reject placements that hide earlier objects."""

    def __init__(self, width: int, height: int) -> None:
        self.owner = np.full((height, width), -1, dtype=np.int16)
        self.shapes: list[Shape] = []
        self.areas: list[int] = []
        self.visible: list[int] = []

    def try_add(self, shape: Shape) -> bool:
        # A crowd region is exclusive, so no individual annotation ends up inside it.
        if any(box_iou(s.box, shape.box) > (0.0 if s.iscrowd else MAX_BOX_IOU) for s in self.shapes):
            return False
        x0, y0, x1, y1 = shape.box
        solid = shape.alpha > 0.5
        region = self.owner[y0:y1, x0:x1]
        covered = region[solid]
        hidden = np.bincount(covered[covered >= 0], minlength=len(self.shapes))
        for i, count in enumerate(hidden):
            if self.visible[i] - count < (1 - MAX_HIDDEN) * self.areas[i]:
                return False
        self.visible = [v - int(c) for v, c in zip(self.visible, hidden)]
        region[solid] = len(self.shapes)
        self.shapes.append(shape)
        self.areas.append(int(solid.sum()))
        self.visible.append(self.areas[-1])
        return True


def class_colour(rng: np.random.Generator, category_id: int) -> np.ndarray:
    """RGB float32 near the class's own hue, with random saturation and value."""
    hue = (CLASS_HUE[category_id] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*SATURATION), rng.uniform(*VALUE))
    return np.array(rgb, dtype=np.float32) * 255


def sample_crowd(rng: np.random.Generator, width: int, height: int) -> Shape | None:
    category = CATEGORIES[rng.integers(len(CATEGORIES))]
    side = rng.uniform(0.25, 0.45) * min(width, height)
    cx, cy = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
    polygons = []
    for _ in range(rng.integers(CROWD_SHAPES[0], CROWD_SHAPES[1] + 1)):
        px, py = cx + rng.uniform(-side / 2, side / 2), cy + rng.uniform(-side / 2, side / 2)
        polygons += shape_polygons(rng, category["name"], rng.uniform(4, 8), px, py)
    drawn = rasterise(polygons, width, height)
    return Shape(*drawn, category["id"], iscrowd=1) if drawn else None


def sample_object(rng: np.random.Generator, width: int, height: int) -> Shape | None:
    category = CATEGORIES[rng.integers(len(CATEGORIES))]
    # Uniform in sqrt(size): between log-uniform (mostly tiny) and uniform (mostly large),
    # so small, medium and large COCO areas all occur often.
    lo, hi = math.sqrt(MIN_SIZE), math.sqrt(MAX_SIZE_FRAC * min(width, height))
    size = rng.uniform(lo, hi) ** 2
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    drawn = rasterise(shape_polygons(rng, category["name"], size, cx, cy), width, height)
    return Shape(*drawn, category["id"], iscrowd=0) if drawn else None


def plan_objects(rng: np.random.Generator, background: np.ndarray, with_crowd: bool) -> list[Shape]:
    height, width = background.shape[:2]
    layout = Layout(width, height)
    if with_crowd:
        crowd = sample_crowd(rng, width, height)
        if crowd:
            layout.try_add(crowd)
    odds = np.array(COUNT_WEIGHTS) / sum(COUNT_WEIGHTS)
    target = len(layout.shapes) + 1 + int(rng.choice(MAX_OBJECTS, p=odds))
    attempts = 0
    while len(layout.shapes) < target and attempts < 20 * target:
        attempts += 1
        shape = sample_object(rng, width, height)
        if shape:
            layout.try_add(shape)
    for shape in layout.shapes:
        shape.colour = class_colour(rng, shape.category_id)
    return layout.shapes


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradient plus colour blotches plus stripes and unlabelled clutter, as float32 HxWx3."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    canvas = start + ramp[..., None] * (end - start)
    cells = rng.integers(2, 8, size=2)
    blotches = Image.fromarray(rng.integers(0, 256, size=(cells[1], cells[0], 3), dtype=np.uint8))
    blotches = np.asarray(blotches.resize((width, height), Image.BICUBIC), dtype=np.float32)
    canvas += (blotches / 127.5 - 1) * BLOTCH_AMPLITUDE
    for _ in range(rng.integers(STRIPE_PATCHES[0], STRIPE_PATCHES[1] + 1)):
        x0, x1 = np.sort(rng.integers(0, width, size=2))
        y0, y1 = np.sort(rng.integers(0, height, size=2))
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        phase = (xs[y0:y1, x0:x1] * math.cos(angle) + ys[y0:y1, x0:x1] * math.sin(angle)) / period
        on = (phase % 1.0 < 0.5)[..., None]
        colour, strength = rng.uniform(0, 255, size=3), rng.uniform(0.2, 0.6)
        patch = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = np.where(on, patch + strength * (colour - patch), patch)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw_clutter(rng, ImageDraw.Draw(image), width, height)
    return np.asarray(image, dtype=np.float32)


def draw_clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """Lines, scribbles and irregular blobs: texture that is none of the classes."""
    for _ in range(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1)):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = rng.integers(3)
        if kind == 0:
            ends = rng.uniform(0, 1, size=(2, 2)) * (width, height)
            draw.line([tuple(p) for p in ends], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            start = rng.uniform(0, 1, size=2) * (width, height)
            walk = start + np.cumsum(rng.normal(0, 12, size=(int(rng.integers(3, 9)), 2)), axis=0)
            draw.line([tuple(p) for p in walk], fill=colour, width=int(rng.integers(1, 3)))
        else:
            n = int(rng.integers(5, 10))
            outline = _ring_points(n, phase=rng.uniform(0, 2 * math.pi)) * rng.uniform(0.3, 1.0, (n, 1))
            centre = rng.uniform(0, 1, size=2) * (width, height)
            draw.polygon([tuple(p) for p in outline * rng.uniform(2, 7) + centre], fill=colour)


def render_image(rng: np.random.Generator, with_objects: bool = True) -> tuple[Image.Image, list[Shape]]:
    """Render one scene; with_objects=False draws the identical scene minus its objects.

    The random stream is consumed identically either way, so the two renders differ
    exactly where objects were drawn (used by the tests to check the annotations).
    """
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    canvas = render_background(rng, width, height)
    scene = rng.random()
    shapes = [] if scene < NEGATIVE_FRAC else plan_objects(
        rng, canvas, with_crowd=scene < NEGATIVE_FRAC + CROWD_FRAC)
    if with_objects:
        for shape in shapes:
            x0, y0, x1, y1 = shape.box
            alpha = shape.alpha[..., None]
            canvas[y0:y1, x0:x1] += alpha * (shape.colour - canvas[y0:y1, x0:x1])
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * NOISE_STD
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)), shapes


def write_split(out: Path, split: str, split_code: int, n: int, seed: int,
                on_image: Callable[[], None] | None) -> int:
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, n + 1):
        image, shapes = render_image(np.random.default_rng([seed, split_code, image_id]))
        file_name = f"{image_id:06d}.png"
        image.save(image_dir / file_name, optimize=False)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for shape in shapes:
            x0, y0, x1, y1 = shape.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": shape.category_id,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float((x1 - x0) * (y1 - y0)), "iscrowd": shape.iscrowd,
            })
        if on_image:
            on_image()
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    coco = {"info": {"description": DATASET_MARK, "seed": seed}, "images": images, "annotations": annotations,
            "categories": CATEGORIES}
    (out / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return len(annotations)


def write_synth(out: Path, n_train: int, n_val: int, seed: int,
                on_image: Callable[[], None] | None = None) -> dict:
    """Write out/annotations/{train,val}.json and out/images/{train,val}/*.png; return a summary."""
    out = Path(out)
    counts = {split: write_split(out, split, code, n, seed, on_image)
              for code, (split, n) in enumerate((("train", n_train), ("val", n_val)))}
    return {"train": n_train, "val": n_val, "annotations": counts,
            "categories": [c["name"] for c in CATEGORIES]}
