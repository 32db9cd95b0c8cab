"""`lad demo`: the whole LAD story on the embedded dataset, sized for 2 CPU cores.

synth -> teacher-train -> assign --cache -> two students of one architecture and schedule
(baseline: own assignments; LAD: the teacher's cached assignments) -> eval of all three ->
predict --save-images of the LAD student on a few val images (OUT/predictions/) -> one sheet
of the same val images: ground truth, baseline student, LAD student (OUT/compare.png).
Stdout: the metrics table, the gain measured over seeds, where the sheet is; the rest on stderr.
"""
import json
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

from .data.make import synthesize
from .distill.cache.build import run_assign
from .distill.config import AssignConfig
from .engine.config import EvalConfig, PredictConfig, TrainConfig
from .engine.evaluate import format_rows, run_eval
from .engine.loop import train
from .engine.predict import run_predict
from .outputs import write_text
from .runtime import console, resolve_device, use_bf16
from .viz.compare import compare_sheet, save_sheet
from .viz.detections import draw_detections

# The CPU preset (demo_preset.json): dataset size, network, schedule, epochs.
PRESET = json.loads(resources.files(__package__).joinpath("demo_preset.json").read_text())
DATA, MODEL, SCHEDULE = PRESET["data"], PRESET["model"], PRESET["schedule"]
TEACHER_EPOCHS, STUDENT_EPOCHS = PRESET["teacher_epochs"], PRESET["student_epochs"]
DETECTIONS = "val_detections.json"  # each student's val detections, in its run folder
PREDICTED = 8  # val images the demo ends by drawing the LAD student's detections on
# The demo's students score objects 0.3-0.7 and their duplicates 0.3-0.45 (4 epochs): at
# predict's default 0.3 a picture holds dozens of boxes per object, at 0.5 the confident ones.
DRAWN_SCORE = 0.5
# Measured on this preset with the demo's own precision (README, "The demo": `python
# examples/lad_vs_baseline.py`, bf16, one teacher, seeds 0, 1, 2; seed 0 is what `lad demo`
# prints): one run cannot tell its gain from seed noise, so the demo quotes the spread.
GAIN_OVER_SEEDS = ("LAD gain over seeds 0, 1, 2 on this preset (README, examples/lad_vs_baseline.py): +0.078 AP, "
                   "baseline student 0.119 ± 0.043, LAD student 0.196 ± 0.019 (mean ± std)")


def timed(name: str, fn, seconds: dict):
    console.rule(f"[bold]{name}")
    start = time.perf_counter()
    result = fn()
    seconds[name] = round(time.perf_counter() - start, 1)
    return result


def evaluate_run(run: Path, data: Path, checkpoint: str = "last.pt", amp: str = "auto",
                 detections: Path | None = None) -> dict:
    """Val metrics of RUN/checkpoint; `detections`: also write them there (COCO results json)."""
    return run_eval(EvalConfig(str(run / checkpoint), str(data), batch=SCHEDULE["batch"], device=SCHEDULE["device"],
                               amp=amp, detections=None if detections is None else str(detections)))[0]


def student_config(data: Path, seed: int, epochs: int | None = None, **changes) -> TrainConfig:
    """The preset's student, STUDENT_EPOCHS by default (lr x0.1 for the last epoch, scored by
    `evaluate_run` afterwards); `changes` override preset fields (arch, warmup, source...)."""
    epochs = STUDENT_EPOCHS if epochs is None else epochs
    return TrainConfig(out="", data=str(data), epochs=epochs, lr_steps=str(epochs - 1), val_split="", seed=seed,
                       **{**MODEL, **SCHEDULE, **changes})


def prepare_teacher(out: Path, overwrite: bool, seconds: dict | None = None, amp: str = "auto") -> tuple[Path, Path, dict]:
    """synth + teacher-train + assign --cache; returns (data, cache, the teacher's val metrics)."""
    seconds = {} if seconds is None else seconds
    data, teacher, cache = out / "data", out / "teacher", out / "teacher.zarr"
    timed("synth", lambda: synthesize(data, DATA["train"], DATA["val"], DATA["seed"], overwrite), seconds)
    config = TrainConfig(out=str(teacher), data=str(data), epochs=TEACHER_EPOCHS, lr_steps=str(TEACHER_EPOCHS - 1),
                         eval_every=TEACHER_EPOCHS, amp=amp, **MODEL, **SCHEDULE)
    summary = timed("teacher-train", lambda: train(config, overwrite=overwrite), seconds)
    assign = AssignConfig(str(teacher / "last.pt"), str(data), cache=str(cache), batch=SCHEDULE["batch"],
                          device=SCHEDULE["device"], amp=amp, overwrite=overwrite)
    timed("assign --cache", lambda: run_assign(assign), seconds)
    return data, cache, summary["val"]


def train_students(out: Path, data: Path, cache: Path, seed: int, overwrite: bool, seconds: dict | None = None,
                   amp: str = "auto") -> dict:
    """A baseline and a LAD student of the same architecture, schedule and seed; their metrics."""
    seconds = {} if seconds is None else seconds
    student = student_config(data, seed, amp=amp)
    rows = {}
    for name, run, source in (("baseline student", out / "baseline", {}), ("LAD student", out / "lad", {"cache": str(cache)})):
        timed(f"student-train ({name})", lambda: train(replace(student, out=str(run), **source), overwrite=overwrite), seconds)
        rows[name] = timed(f"eval ({name})", lambda: evaluate_run(run, data, amp=amp, detections=run / DETECTIONS),
                           seconds)
    return rows


def show_predictions(out: Path, data: Path, overwrite: bool, seconds: dict, amp: str) -> Path:
    """`lad predict --save-images` of the LAD student on the first PREDICTED val images."""
    images = sorted((data / "images" / "val").iterdir())[:PREDICTED]
    cfg = PredictConfig(str(out / "lad" / "last.pt"), tuple(map(str, images)), str(out / "predictions"),
                        score_thr=DRAWN_SCORE, batch=SCHEDULE["batch"], device=SCHEDULE["device"], amp=amp, overwrite=overwrite)
    timed("predict --save-images (LAD student)", lambda: run_predict(cfg, draw=draw_detections), seconds)
    return out / "predictions" / "images"


def draw_comparison(out: Path, data: Path, rows: dict) -> Path:
    """OUT/compare.png: the first PREDICTED val images (those `show_predictions` draws) as the
    ground truth, the baseline student and the LAD student see them, each row titled with its
    val AP. Each student shows as many of its detections on an image as the image has objects,
    its most confident ones: the same number of boxes in every row, so that what differs is
    where they are."""
    split = json.loads((data / "annotations" / "val.json").read_text())
    shown = sorted(split["images"], key=lambda im: im["file_name"])[:PREDICTED]
    gt = [[a for a in split["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd")] for im in shown]
    sheet_rows = [("ground truth (val annotations)", gt)]
    for name, run, what in (("baseline student", out / "baseline", "its own assignments"),
                            ("LAD student", out / "lad", "the teacher's cached assignments")):
        found = json.loads((run / DETECTIONS).read_text())
        per_image = [sorted((r for r in found if r["image_id"] == im["id"]), key=lambda r: -r["score"])[:len(boxes)]
                     for im, boxes in zip(shown, gt)]
        sheet_rows.append((f"{name}, trained on {what}: val AP {rows[name]['AP']:.3f}", per_image))
    caption = (f"{len(shown)} val images of the embedded dataset; each student's N most confident detections on an "
               "image with N objects, labelled with their score; colour = class")
    sheet = compare_sheet([data / "images" / "val" / im["file_name"] for im in shown], sheet_rows,
                          split["categories"], caption)
    return save_sheet(sheet, out / "compare.png")


def run_demo(out: Path, overwrite: bool = False, amp: str = "auto") -> str:
    out = Path(out)
    seconds: dict = {}
    started = time.perf_counter()
    bf16 = use_bf16(resolve_device(SCHEDULE["device"]), amp)
    data, cache, teacher_metrics = prepare_teacher(out, overwrite, seconds, amp)
    rows = {"teacher": teacher_metrics}  # validated on the val split at the end of its last epoch
    rows.update(train_students(out, data, cache, 0, overwrite, seconds, amp))
    pictures = show_predictions(out, data, overwrite, seconds, amp)
    sheet = timed("compare.png", lambda: draw_comparison(out, data, rows), seconds)
    total = round(time.perf_counter() - started, 1)
    write_text(out / "results.json", json.dumps({"metrics": rows, "seconds": seconds, "total_seconds": total,
                                                  "bf16": bf16, "pictures": str(pictures), "compare": str(sheet)},
                                                 indent=2) + "\n")
    console.print(format_timings(seconds, total, bf16, pictures), markup=False, highlight=False)
    return format_results(rows, sheet)


def format_timings(seconds: dict, total: float, bf16: bool, pictures: Path) -> str:
    """For stderr: the elapsed time of each stage, where the LAD student's drawings are."""
    width = max(len(stage) for stage in seconds)
    stages = [f"{stage:<{width}}  {s:7.1f} s" for stage, s in seconds.items()]
    precision = "bf16 autocast" if bf16 else "float32 (no bf16 autocast)"
    return "\n".join([*stages, f"{'total':<{width}}  {total:7.1f} s ({precision})",
                      f"the LAD student's detections on {PREDICTED} val images: {pictures}/"])


def format_results(rows: dict, sheet: Path) -> str:
    """Stdout: the metrics table, the gain measured over seeds, where the comparison sheet is."""
    return "\n".join([format_rows(rows), "(val split of the embedded dataset, this run)", GAIN_OVER_SEEDS,
                      f"ground truth, baseline and LAD student on {PREDICTED} val images: {sheet}"])
