"""Inference over a split and COCO metrics, scored on the annotation file as COCOeval reads it
(not the reader's filtered GT, so that AP compares with other toolkits'): by faster-coco-eval
(pycocotools' numbers, about ten times faster; `benchmarks/eval_time.py`) or pycocotools
itself. APs/APm/APl split the GT by the file's `area` field (box width x height where
absent), as COCOeval does everywhere."""
import contextlib
import io
import json
from pathlib import Path

from .. import dist
from ..choices import SCORERS
from ..data.coco import CocoSplit, category_keys, load_split, locate_split
from ..data.dataset import DetectionDataset
from ..data.views import View
from ..errors import LadError
from ..outputs import write_text
from ..model.build import load_detector
from ..model.detector import PAADetector
from ..progress import progress_bar
from ..runtime import console, use_bf16
from .config import EvalConfig
from .inference import coco_records, detect_sharded

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def predict_sharded(model: PAADetector, split: CocoSplit, view: View, batch_size: int, ctx: dist.Dist,
                    workers: int = 0, on_batch=None, bf16: bool = False) -> list[dict] | None:
    """COCO-format detections (original image pixels, dataset category ids) of every image of
    the split, the images dealt out to the processes; rank 0 gets them all, the others None."""
    dataset = DetectionDataset(split, [view], model.config.layout.size_divisor)
    found = detect_sharded(model, dataset, batch_size, ctx, workers, on_batch, bf16=bf16)
    if found is None:
        return None
    category_ids = [c["id"] for c in split.categories]
    return [r for index, det in found for r in coco_records(split.images[index].id, det, category_ids)]


def evaluate_sharded(model: PAADetector, split: CocoSplit, view: View, batch_size: int, ctx: dist.Dist,
                     workers: int = 0, bf16: bool = False) -> dict | None:
    """COCO metrics on rank 0 (None on the other ranks) of a sharded prediction."""
    results = predict_sharded(model, split, view, batch_size, ctx, workers, bf16=bf16)
    return None if results is None else coco_metrics(split, results)


def coco_metrics(split: CocoSplit, results: list[dict], scorer: str = SCORERS[0]) -> dict:
    """AP, AP50, AP75, APs, APm, APl as fractions (None where the split has no GT of that
    size: COCOeval's -1), and per_class: {category key: AP}, keyed by name (by "name (id N)"
    where two categories share a name: `category_keys`)."""
    keys = category_keys(split.categories)
    coco, cocoeval = _scorer(scorer)
    with contextlib.redirect_stdout(io.StringIO()):  # the scorer prints its table on stdout
        gt = coco()
        gt.dataset = _ground_truth(split)
        gt.createIndex()
        dt = _detections(coco, gt, results)
        ev = cocoeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: (None if v < 0 else float(v)) for k, v in zip(METRIC_KEYS, ev.stats[:6])}
    precision = ev.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, area all, 100 dets
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[keys[cat_id]] = float(p[p > -1].mean()) if (p > -1).any() else None
    metrics["per_class"] = per_class
    return metrics


def _scorer(name: str):
    """(COCO, COCOeval) of a scorer: the same API, and the same numbers (tests/test_scorer.py)."""
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    if name == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster
        return COCO, COCOeval_faster
    raise LadError(f"unknown --scorer {name!r}: use {', '.join(SCORERS)}")


def _detections(coco, gt, results: list[dict]):
    """The results as the scorer's COCO object, on copies (loadRes adds fields to each). No
    detection at all is scored 0 where the split has GT and None where not; pycocotools'
    loadRes cannot read an empty list, so that case is built directly."""
    if results:
        return gt.loadRes([dict(r) for r in results])
    dt = coco()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]), "annotations": []}
    dt.createIndex()
    return dt


def area_warning(split: CocoSplit) -> str | None:
    """A line when every annotation of the file has `area` 0: COCOeval then counts every box
    as small (APs/APm/APl use that field; AP, AP50, AP75 do not)."""
    anns = _ground_truth(split)["annotations"]
    if anns and all(not a["area"] for a in anns):
        return (f"{split.ann_file}: every annotation has area 0, so APs/APm/APl count every box as small "
                "(COCOeval sizes GT by the file's area field; AP, AP50, AP75 are unaffected)")
    return None


def _ground_truth(split: CocoSplit) -> dict:
    """The annotation file as COCOeval needs it: area and iscrowd filled in where absent."""
    doc = json.loads(split.ann_file.read_bytes())
    for ann in doc.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    doc.setdefault("annotations", [])
    return doc


def ap_text(value: float | None) -> str:
    """An AP for a progress line: '-' where the split has no GT to score (None)."""
    return "- (no GT)" if value is None else f"{value:.3f}"


def metric_cells(metrics: dict | None = None) -> str:
    """The six metric names (no argument) or values ('-' where None), in 6-wide columns."""
    if metrics is None:
        return "  ".join(f"{k:>6}" for k in METRIC_KEYS)
    return "  ".join(f"{'-':>6}" if metrics[k] is None else f"{metrics[k]:6.3f}" for k in METRIC_KEYS)


def format_table(metrics: dict) -> str:
    """The six numbers and the per-class table, as fixed-width text."""
    width = max([5] + [len(n) for n in metrics["per_class"]])
    rows = [f"{n:<{width}}  {'-' if ap is None else f'{ap:.3f}'}" for n, ap in metrics["per_class"].items()]
    return "\n".join([metric_cells(), metric_cells(metrics), "", f"{'class':<{width}}  AP", *rows])


def format_rows(rows: dict[str, dict]) -> str:
    """One line per named metrics dict (a model's), under a header."""
    width = max(len(n) for n in rows)
    return "\n".join([f"{'model':<{width}}  {metric_cells()}", *(f"{n:<{width}}  {metric_cells(m)}" for n, m in rows.items())])


def run_eval(cfg: EvalConfig) -> tuple[dict, str] | None:
    """`lad eval`: metrics dict and the printable table of a checkpoint on a split (on rank 0;
    None on the other processes under torchrun, which predict their share of the images)."""
    ctx = dist.setup(cfg.device)
    model, ckpt = load_detector(Path(cfg.checkpoint))
    model = model.to(ctx.device)
    coco = load_split(*locate_split(cfg.data, cfg.split, cfg.ann, cfg.images), strict_boxes=cfg.strict_boxes)
    coco.check_categories(ckpt["categories"], str(cfg.checkpoint))
    if ctx.is_main and (warning := area_warning(coco)):
        console.print(f"warning: {warning}", markup=False, emoji=False, soft_wrap=True)
    view = View("orig", ckpt["size"], ckpt["max_size"], False)
    with progress_bar(disable=not ctx.is_main) as bar:
        task = bar.add_task(f"eval {cfg.split}", total=len(range(ctx.rank, len(coco.images), ctx.world)), info="")
        results = predict_sharded(model, coco, view, cfg.batch, ctx, cfg.workers, on_batch=lambda n: bar.advance(task, n),
                                  bf16=use_bf16(ctx.device, cfg.amp))
    if results is None:
        return None
    if cfg.detections is not None:
        write_text(Path(cfg.detections), json.dumps(results))
    metrics = coco_metrics(coco, results, cfg.scorer)
    return metrics, format_table(metrics)
