"""`lad predict --save-images` and the demo's comparison sheet: an image with its boxes drawn,
scaled up to a readable size when small, labels placed where they hide no other label and no
box edge, and a legend of the classes below the image."""
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..data.dataset import decode_image
from .draw import palette

READABLE_SIDE = 512  # a smaller image is scaled up until its shorter side is this
FONT_PX, LINE_PX, PAD_PX = 14, 2, 2  # screen pixels, whatever the image's size
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in the drawn picture's pixels


def font(size: int = FONT_PX) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def class_colours(categories: list[dict]) -> dict[int, tuple[int, int, int]]:
    """Category id -> RGB, one palette colour per class in the checkpoint's order."""
    return {c["id"]: tuple(round(255 * v) for v in palette(i)) for i, c in enumerate(categories)}


def ink_on(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on `colour`."""
    return (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)


def readable(image: Image.Image, side: int = READABLE_SIDE) -> tuple[Image.Image, float]:
    """The image scaled up (never down) until its shorter side is at least `side`, and the scale."""
    scale = max(1.0, side / min(image.size))
    if scale == 1.0:
        return image.copy(), 1.0
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS), scale


def _overlap(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _edges(box: Box, line: int) -> list[Box]:
    """The four strips a box's outline covers (PIL draws an outline inward from the corners)."""
    x1, y1, x2, y2 = box
    return [(x1, y1, x2, y1 + line), (x1, y2 - line, x2, y2), (x1, y1, x1 + line, y2), (x2 - line, y1, x2, y2)]


def place_labels(boxes: list[Box], sizes: list[tuple[int, int]], canvas: tuple[int, int], line: int = LINE_PX) -> list[Box]:
    """Where each box's label goes, in the order given (the most important first): the first of
    above the box, inside its top, below it, inside its bottom (left-aligned, then right-aligned)
    that stays on the canvas and overlaps no label placed before and no box's outline; where
    every place overlaps something, the one that overlaps least."""
    outlines = [strip for box in boxes for strip in _edges(box, line)]
    placed: list[Box] = []
    for (x1, y1, x2, y2), (w, h) in zip(boxes, sizes):
        outside, inside = (x1, x2 - w), (x1 + line, x2 - line - w)
        candidates = [(x, y) for y, xs in ((y1 - h, outside), (y1 + line, inside), (y2, outside), (y2 - line - h, inside))
                      for x in xs]
        best, best_cost = None, None
        for x, y in candidates:
            x, y = min(max(x, 0), max(canvas[0] - w, 0)), min(max(y, 0), max(canvas[1] - h, 0))
            label = (x, y, x + w, y + h)
            cost = sum(_overlap(label, other) for other in placed) + sum(_overlap(label, s) for s in outlines)
            if best_cost is None or cost < best_cost:
                best, best_cost = label, cost
            if cost == 0:
                break
        placed.append(best)
    return placed


def draw_boxes(image: Image.Image, boxes: list[Box], colours: list[tuple], texts: list[str | None]) -> Image.Image:
    """Outlines in their colours, then each text in a filled label placed by `place_labels`.
    Boxes come most important first: drawn last (on top) and labelled first."""
    pen = ImageDraw.Draw(image)
    for box, colour in reversed(list(zip(boxes, colours))):
        pen.rectangle(box, outline=colour, width=LINE_PX)
    labelled = [(box, colour, text) for box, colour, text in zip(boxes, colours, texts) if text]
    sizes = []
    for _, _, text in labelled:
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font())
        sizes.append((right - left + 2 * PAD_PX, bottom - top + 2 * PAD_PX))
    spots = place_labels([box for box, _, _ in labelled], sizes, image.size)
    for (_, colour, text), spot in zip(labelled, spots):
        pen.rectangle((spot[0], spot[1], spot[2] - 1, spot[3] - 1), fill=colour)  # PIL includes the far corner
        left, top, _, _ = pen.textbbox((0, 0), text, font=font())
        pen.text((spot[0] + PAD_PX - left, spot[1] + PAD_PX - top), text, fill=ink_on(colour), font=font())
    return image


def legend(categories: list[dict], width: int, counts: dict[int, int] | None = None) -> Image.Image:
    """A white band `width` wide: a swatch and the name of each class (with its count), wrapped."""
    colours, pen = class_colours(categories), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(colours[c["id"]], c["name"] + (f" ({counts.get(c['id'], 0)})" if counts is not None else ""))
               for c in categories]
    spots, x, y, row = [], 2 * PAD_PX, 2 * PAD_PX, FONT_PX + 4 * PAD_PX
    for colour, text in entries:
        w = FONT_PX + 2 * PAD_PX + round(pen.textlength(text, font=font())) + 4 * FONT_PX // 3
        if x + w > width and x > 2 * PAD_PX:
            x, y = 2 * PAD_PX, y + row
        spots.append((x, y, colour, text))
        x += w
    band = Image.new("RGB", (width, y + row), (255, 255, 255))
    pen = ImageDraw.Draw(band)
    for x, y, colour, text in spots:
        pen.rectangle((x, y + PAD_PX, x + FONT_PX, y + PAD_PX + FONT_PX), fill=colour)
        pen.text((x + FONT_PX + 2 * PAD_PX, y + PAD_PX), text, fill=(0, 0, 0), font=font())
    return band


def stack(image: Image.Image, band: Image.Image) -> Image.Image:
    """The image with the band below it."""
    sheet = Image.new("RGB", (image.width, image.height + band.height), (255, 255, 255))
    sheet.paste(image, (0, 0))
    sheet.paste(band, (0, image.height))
    return sheet


def draw_detections(path: Path, records: list[dict], categories: list[dict]) -> Image.Image:
    """The image at `path` (its stored pixels, as the network read them), scaled up to a
    readable size when small, with each detection's box (COCO results: xywh in image pixels)
    and "class score" in the class's colour, and a legend of the classes with their counts."""
    image, scale = readable(Image.fromarray(decode_image(path).permute(1, 2, 0).numpy()))
    ordered = sorted(records, key=lambda r: -r["score"])  # the most confident labelled first, drawn on top
    colours, names = class_colours(categories), {c["id"]: c["name"] for c in categories}
    boxes = [tuple(v * scale for v in (x, y, x + w, y + h)) for x, y, w, h in (r["bbox"] for r in ordered)]
    draw_boxes(image, boxes, [colours[r["category_id"]] for r in ordered],
               [f"{names[r['category_id']]} {r['score']:.2f}" for r in ordered])
    counts: dict[int, int] = {}
    for r in records:
        counts[r["category_id"]] = counts.get(r["category_id"], 0) + 1
    return stack(image, legend(categories, image.width, counts))
