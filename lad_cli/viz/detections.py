"""`lad predict --save-images`: an image with its detections drawn, one colour per class."""
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..data.dataset import decode_image
from .draw import palette


def draw_detections(path: Path, records: list[dict], categories: list[dict]) -> Image.Image:
    """The image at `path` (its stored pixels, as the network read them) with each detection's
    box (COCO results: xywh in image pixels) and "class score" above it, in the class's colour.
    Line width and text size follow the image size."""
    pixels = decode_image(path).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)
    pen = ImageDraw.Draw(image)
    side = min(image.size)
    line = max(1, round(side / 250))
    font = ImageFont.load_default(size=max(10, round(side / 40)))
    colour_of = {c["id"]: tuple(round(255 * v) for v in palette(i)) for i, c in enumerate(categories)}
    name_of = {c["id"]: c["name"] for c in categories}
    for r in sorted(records, key=lambda r: r["score"]):  # the most confident on top
        x, y, w, h = r["bbox"]
        colour = colour_of[r["category_id"]]
        pen.rectangle([x, y, x + w, y + h], outline=colour, width=line)
        text = f"{name_of[r['category_id']]} {r['score']:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        tx, ty = x, max(0, y - (bottom - top) - 2 * line)
        pen.rectangle([tx, ty, tx + right - left + 2 * line, ty + bottom - top + 2 * line], fill=colour)
        pen.text((tx + line - left, ty + line - top), text, fill=(255, 255, 255), font=font)
    return image
