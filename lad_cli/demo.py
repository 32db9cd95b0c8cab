"""`lad demo`: the whole LAD story on the embedded dataset, sized for 2 CPU cores.

synth -> teacher-train -> assign --cache -> two students of one architecture and schedule
(baseline: own assignments; LAD: the teacher's cached assignments) -> eval of all three.
"""
import json
import time
from dataclasses import replace
from pathlib import Path

from .assign.offline import run_assign
from .data.make import synthesize
from .evaluate import METRIC_KEYS, run_eval
from .runtime import console
from .train.config import TrainConfig
from .train.loop import train

# The CPU preset: a narrow ResNet-18 PAA at a small input size.
DATA = {"train": 600, "val": 150, "seed": 0}
MODEL = {"arch": "resnet18", "width": 64, "head_depth": 2, "size": 160, "max_size": 256}
SCHEDULE = {"batch": 8, "lr": 0.02, "warmup": 50, "log_every": 10, "device": "cpu", "workers": 0}
TEACHER_EPOCHS = 6
STUDENT_EPOCHS = 3


def run_demo(out: Path, overwrite: bool = False) -> str:
    out = Path(out)
    data = out / "data"
    started = time.perf_counter()
    steps = {}

    def step(name, fn):
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        result = fn()
        steps[name] = round(time.perf_counter() - start, 1)
        return result

    step("synth", lambda: synthesize(data, DATA["train"], DATA["val"], DATA["seed"], overwrite))
    base = TrainConfig(out="", data=str(data), **MODEL, **SCHEDULE)
    teacher_run = out / "teacher"
    step("teacher-train", lambda: train(replace(base, out=str(teacher_run), epochs=TEACHER_EPOCHS), overwrite=overwrite))
    cache = out / "teacher.zarr"
    step("assign --cache", lambda: run_assign(teacher_run / "last.pt", data, "train", None, None, cache, "orig,flip",
                                              SCHEDULE["batch"], "cpu", 0, overwrite=overwrite))
    student = replace(base, epochs=STUDENT_EPOCHS, val_split="")
    step("student-train (baseline)", lambda: train(replace(student, out=str(out / "baseline")), overwrite=overwrite))
    step("student-train --cache (LAD)", lambda: train(replace(student, out=str(out / "lad"), cache=str(cache)),
                                                       overwrite=overwrite))
    rows = {}
    for name, run in (("teacher", teacher_run), ("baseline student", out / "baseline"), ("LAD student", out / "lad")):
        rows[name] = step(f"eval {name}", lambda run=run: run_eval(run / "last.pt", data, "val", None, None, None,
                                                                  SCHEDULE["batch"], "cpu", 0)[0])
    total = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps({"metrics": rows, "seconds": steps, "total_seconds": total}, indent=2) + "\n")
    return format_results(rows, total)


def format_results(rows: dict, seconds: float) -> str:
    width = max(len(n) for n in rows)
    lines = [f"{'model':<{width}}  " + "  ".join(f"{k:>6}" for k in METRIC_KEYS)]
    for name, m in rows.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{'-':>6}" if m[k] is None else f"{m[k]:6.3f}" for k in METRIC_KEYS))
    lines.append(f"(val split of the embedded dataset; {seconds:.0f} s in all)")
    return "\n".join(lines)
