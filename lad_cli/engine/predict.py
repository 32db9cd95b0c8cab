"""`lad predict`: a checkpoint on images without annotations, through exactly the inference
of `lad eval` (`engine.inference`: the same view, batching, network and post-processing),
then a score threshold. The output folder is written whole or not at all."""
import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from .. import dist
from ..data.coco import category_keys
from ..data.images import ImageFile, ImageFolder, find_images
from ..data.views import View
from ..errors import LadError
from ..model.build import load_detector
from ..model.postprocess import InferenceParams
from ..outputs import PREDICTIONS, write_text
from ..outputs import claim as claim_output
from ..progress import progress_bar
from ..runtime import use_bf16
from .config import PredictConfig
from .inference import coco_records, detect_sharded

# draw(image path, the image's records (COCO results), categories) -> a picture to save (PIL).
Draw = Callable[[Path, list[dict], list[dict]], object]
DRAWN_SUFFIXES = (".jpg", ".jpeg", ".png")  # drawn in the input's format; others as PNG


def run_predict(cfg: PredictConfig, draw: Draw | None = None) -> dict | None:
    """Detect, write OUT/predictions.json (and, with `draw`, OUT/images/) and return the
    summary, on rank 0 (None on the other processes under torchrun, which detect their share
    of the images). Every image is checked before any work; nothing is left half-written."""
    if cfg.score_thr < 0 or cfg.max_det < 1:
        raise LadError("--score-thr must be >= 0 and --max-det >= 1")
    ctx = dist.setup(cfg.device)
    model, ckpt = load_detector(Path(cfg.checkpoint))
    model = model.to(ctx.device)
    images = find_images(list(cfg.sources))
    view = View("orig", cfg.size or ckpt["size"], cfg.max_size or ckpt["max_size"], False)
    out, claims = Path(cfg.out), []

    def claim_folder() -> Path:  # the output is written beside and renamed into place when whole
        claims.append(claim_output(out, PREDICTIONS, cfg.overwrite, predict_inputs(cfg, images)))
        return claims[-1].where
    staging = dist.on_main(ctx, claim_folder)
    try:
        dataset = ImageFolder(images, view, model.config.layout.size_divisor)
        start = time.perf_counter()
        with progress_bar(disable=not ctx.is_main) as bar:
            task = bar.add_task("predict", total=len(range(ctx.rank, len(images), ctx.world)), info="")
            found = detect_sharded(model, dataset, cfg.batch, ctx, cfg.workers, on_batch=lambda n: bar.advance(task, n),
                                   params=InferenceParams(max_detections=cfg.max_det), bf16=use_bf16(ctx.device, cfg.amp))
        seconds = time.perf_counter() - start
        if found is None:
            return None
        categories = ckpt["categories"]
        records = [[r for r in coco_records(index, det, [c["id"] for c in categories]) if r["score"] >= cfg.score_thr]
                   for index, det in found]
        doc = {"checkpoint": str(cfg.checkpoint), "input": view.to_dict(), "score_threshold": cfg.score_thr,
               "max_detections": cfg.max_det, "categories": categories,
               "images": [_image_entry(i, im) for i, im in enumerate(images)],
               "detections": [r for rs in records for r in rs]}
        if draw is not None:
            _save_drawings(staging, images, records, categories, draw, doc["images"])
        write_text(staging / "predictions.json", json.dumps(doc))
        claims[0].commit()
    finally:
        for claim in claims:
            claim.release()
    per_class = Counter(r["category_id"] for r in doc["detections"])
    keys = category_keys(categories)  # by name, "name (id N)" where names collide: never merged
    return {"out": str(out), "images": len(images), "detections": len(doc["detections"]),
            "per_class": {keys[c["id"]]: per_class.get(c["id"], 0) for c in categories},
            "score_threshold": cfg.score_thr, "seconds": round(seconds, 2),
            "images_per_second": round(len(images) / max(seconds, 1e-9), 2), "device": str(ctx.device),
            "processes": ctx.world, **({"drawn": str(out / "images")} if draw is not None else {})}


def _image_entry(index: int, image: ImageFile) -> dict:
    return {"id": index, "file_name": image.name, "path": str(image.path), "width": image.width, "height": image.height}


def predict_inputs(cfg: PredictConfig, images: list[ImageFile]) -> list:
    """What predict reads, which its output folder may not be, hold or lie in: the image
    files, the folders given as sources, the checkpoint."""
    folders = [source for source in cfg.sources if Path(source).is_dir()]
    return [cfg.checkpoint, *folders, *(image.path for image in images)]


def _save_drawings(staging: Path, images: list[ImageFile], records: list[list[dict]], categories: list[dict],
                   draw: Draw, entries: list[dict]) -> None:
    """OUT/images/NAME, one per image, under its file name (made unique where two inputs share one)."""
    taken: set[str] = set()
    for index, (image, recs, entry) in enumerate(zip(images, records, entries)):
        name = Path(image.name)
        if name.suffix.lower() not in DRAWN_SUFFIXES:
            name = name.with_suffix(".png")
        if str(name) in taken:
            name = name.with_name(f"{name.stem}-{index}{name.suffix}")
        taken.add(str(name))
        target = staging / "images" / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            draw(image.path, recs, categories).save(target, quality=95)
        except OSError as exc:
            raise LadError(f"{target}: cannot write ({exc.strerror or exc})") from None
        entry["drawn"] = str(Path("images") / name)
