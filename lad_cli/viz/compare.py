"""`lad demo`'s comparison sheet: the same images as their ground truth, the baseline student
and the LAD student see them, one row each under a title that gives the row's val AP."""
from pathlib import Path

from PIL import Image, ImageDraw

from ..data.dataset import decode_image
from ..outputs import write_file
from .detections import FONT_PX, PAD_PX, Box, class_colours, draw_boxes, font, legend, readable, stack

CELL_PX = 256  # each image is scaled to fit a CELL_PX square
GAP_PX = 6
TITLE_PX = 20


def cell(path: Path, records: list[dict], colours: dict) -> Image.Image:
    """One image fitted into a CELL_PX square, its boxes in their class colours; a record with a
    score (a detection) is labelled with it, a ground-truth box is not."""
    stored = Image.fromarray(decode_image(path).permute(1, 2, 0).numpy())
    image, _ = readable(stored, CELL_PX)
    fit = CELL_PX / max(image.size)
    image = image.resize((round(image.width * fit), round(image.height * fit)), Image.Resampling.LANCZOS)
    scale = image.width / stored.width
    ordered = sorted(records, key=lambda r: -r.get("score", 1.0))
    boxes: list[Box] = [tuple(v * scale for v in (x, y, x + w, y + h)) for x, y, w, h in (r["bbox"] for r in ordered)]
    draw_boxes(image, boxes, [colours[r["category_id"]] for r in ordered],
               [f"{r['score']:.2f}" if "score" in r else None for r in ordered])
    square = Image.new("RGB", (CELL_PX, CELL_PX), (235, 235, 235))
    square.paste(image, ((CELL_PX - image.width) // 2, (CELL_PX - image.height) // 2))
    return square


def compare_sheet(images: list[Path], rows: list[tuple[str, list[list[dict]]]], categories: list[dict],
                  caption: str) -> Image.Image:
    """rows: (title, each image's records: COCO boxes xywh in image pixels, with `score` for
    detections). One row of cells per entry, its title above it; the caption and a legend of
    the classes below."""
    colours = class_colours(categories)
    width = len(images) * (CELL_PX + GAP_PX) + GAP_PX
    row_px = TITLE_PX + CELL_PX + GAP_PX
    sheet = Image.new("RGB", (width, len(rows) * row_px + GAP_PX), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    for r, (title, per_image) in enumerate(rows):
        top = GAP_PX + r * row_px
        pen.text((GAP_PX, top), title, fill=(0, 0, 0), font=font(FONT_PX + 2))
        for i, (path, records) in enumerate(zip(images, per_image)):
            sheet.paste(cell(path, records, colours), (GAP_PX + i * (CELL_PX + GAP_PX), top + TITLE_PX))
    note = Image.new("RGB", (width, FONT_PX + 6 * PAD_PX), (255, 255, 255))
    ImageDraw.Draw(note).text((2 * PAD_PX, 2 * PAD_PX), caption, fill=(90, 90, 90), font=font())
    return stack(stack(sheet, legend(categories, width)), note)


def save_sheet(sheet: Image.Image, path: Path) -> Path:
    write_file(Path(path), lambda partial: sheet.save(partial, format="PNG"))
    return Path(path)
