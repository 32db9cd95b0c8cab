"""Share of the training step spent waiting for data, cached LAD, by number of loader workers.

    python -m benchmarks.loader [--workers 0,1,2] [--images 240] [--device cpu]

Writes the embedded dataset and a cache into a temp folder (`cached_setup`), then trains one epoch of the demo preset's student
from the cache with each worker count. The loop itself measures, per logged step, the time
blocked on the loader over the wall time (`data_wait` in metrics.jsonl); the first batch
of the epoch (worker start-up) is reported apart (`first_step_wait_fraction`). Prints one JSON object; the ratio is
against 0 workers in the same run.
"""
import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.synth import write_synth
from lad_cli.demo import MODEL, SCHEDULE, student_config
from lad_cli.distill.cache.build import run_assign
from lad_cli.distill.config import AssignConfig
from lad_cli.engine.checkpoint import model_checkpoint, save_atomic
from lad_cli.engine.loop import train
from lad_cli.model.build import new_detector


def cached_setup(root: Path, images: int, device: str) -> tuple[Path, Path]:
    """The embedded dataset and an `orig,flip` cache of it from an untrained teacher of the demo
    preset (the labels do not matter for timing): (data, cache)."""
    data = root / "data"
    write_synth(data, images, 8, seed=0)
    split = load_split(*locate_split(data, "train"))
    net = new_detector(MODEL["arch"], len(split.categories), MODEL["width"], MODEL["head_depth"], None, MODEL["anchor_scale"])
    save_atomic(model_checkpoint(net, split, student_config(data, seed=0)), root / "teacher.pt")
    cache = root / "cache.zarr"
    run_assign(AssignConfig(str(root / "teacher.pt"), str(data), cache=str(cache), batch=SCHEDULE["batch"], device=device))
    return data, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="lad-loader-"))
    data, cache = cached_setup(root, args.images, args.device)
    result = {"images": args.images, "batch": SCHEDULE["batch"], "size": MODEL["size"], "device": args.device,
              "cpu_threads": torch.get_num_threads()}
    for workers in [int(w) for w in args.workers.split(",")]:
        run = root / f"workers{workers}"
        cfg = replace(student_config(data, seed=0, epochs=1), out=str(run), cache=str(cache), workers=workers,
                      log_every=1, device=args.device)
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
        steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        waits = [s["data_wait"] for s in steps if "data_wait" in s]
        result[f"workers_{workers}"] = {"iterations": len(waits), "wall_s": round(wall, 1),
                                        "first_step_wait_fraction": waits[0],
                                        "data_wait_fraction": round(statistics.mean(waits[1:]), 4)}
    base = result.get("workers_0", {}).get("data_wait_fraction")
    for key in [k for k in result if k.startswith("workers_") and k != "workers_0"]:
        if base:
            result[key]["wait_over_0_workers"] = round(result[key]["data_wait_fraction"] / base, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
