"""`lad demo`: the whole LAD story on the embedded dataset, sized for 2 CPU cores.

synth -> teacher-train -> assign --cache -> two students of one architecture and schedule
(baseline: own assignments; LAD: the teacher's cached assignments) -> eval of all three ->
predict --save-images of the LAD student on a few val images (OUT/predictions/).
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
from .viz.detections import draw_detections

# The CPU preset (demo_preset.json): dataset size, network, schedule, epochs.
PRESET = json.loads(resources.files(__package__).joinpath("demo_preset.json").read_text())
DATA, MODEL, SCHEDULE = PRESET["data"], PRESET["model"], PRESET["schedule"]
TEACHER_EPOCHS, STUDENT_EPOCHS = PRESET["teacher_epochs"], PRESET["student_epochs"]
PREDICTED = 8  # val images the demo ends by drawing the LAD student's detections on


def timed(name: str, fn, seconds: dict):
    console.rule(f"[bold]{name}")
    start = time.perf_counter()
    result = fn()
    seconds[name] = round(time.perf_counter() - start, 1)
    return result


def evaluate_run(run: Path, data: Path, checkpoint: str = "last.pt", amp: str = "auto") -> dict:
    return run_eval(EvalConfig(str(run / checkpoint), str(data), batch=SCHEDULE["batch"], device=SCHEDULE["device"],
                               amp=amp))[0]


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
        rows[name] = timed(f"eval ({name})", lambda: evaluate_run(run, data, amp=amp), seconds)
    return rows


def show_predictions(out: Path, data: Path, overwrite: bool, seconds: dict, amp: str) -> Path:
    """`lad predict --save-images` of the LAD student on the first PREDICTED val images."""
    images = sorted((data / "images" / "val").iterdir())[:PREDICTED]
    cfg = PredictConfig(str(out / "lad" / "last.pt"), tuple(map(str, images)), str(out / "predictions"),
                        batch=SCHEDULE["batch"], device=SCHEDULE["device"], amp=amp, overwrite=overwrite)
    timed("predict --save-images (LAD student)", lambda: run_predict(cfg, draw=draw_detections), seconds)
    return out / "predictions" / "images"


def run_demo(out: Path, overwrite: bool = False, amp: str = "auto") -> str:
    out = Path(out)
    seconds: dict = {}
    started = time.perf_counter()
    bf16 = use_bf16(resolve_device(SCHEDULE["device"]), amp)
    data, cache, teacher_metrics = prepare_teacher(out, overwrite, seconds, amp)
    rows = {"teacher": teacher_metrics}  # validated on the val split at the end of its last epoch
    rows.update(train_students(out, data, cache, 0, overwrite, seconds, amp))
    pictures = show_predictions(out, data, overwrite, seconds, amp)
    total = round(time.perf_counter() - started, 1)
    write_text(out / "results.json", json.dumps({"metrics": rows, "seconds": seconds, "total_seconds": total,
                                                  "bf16": bf16, "pictures": str(pictures)}, indent=2) + "\n")
    return format_results(rows, seconds, total, bf16, pictures)


def format_results(rows: dict, seconds: dict, total: float, bf16: bool, pictures: Path) -> str:
    """The metrics table, the elapsed time of each stage, where the pictures are."""
    width = max(len(stage) for stage in seconds)
    stages = [f"{stage:<{width}}  {s:7.1f} s" for stage, s in seconds.items()]
    precision = "bf16 autocast" if bf16 else "float32 (no bf16 autocast)"
    return "\n".join([format_rows(rows), "(val split of the embedded dataset)", "", *stages,
                      f"{'total':<{width}}  {total:7.1f} s ({precision})", "",
                      f"the LAD student's detections on {PREDICTED} val images: {pictures}/ (boxes, classes, scores; "
                      f"all of them in {pictures.parent / 'predictions.json'})"])
