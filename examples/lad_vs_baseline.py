"""The demo's comparison over several seeds: is LAD above the baseline by more than the spread?

    python examples/lad_vs_baseline.py [--out lad-seeds] [--seeds 0,1,2] [--amp auto|bf16|off]

One teacher (the demo's) is trained and cached once; for each seed a baseline student and a
LAD student (same architecture, schedule and seed) are trained and evaluated. Prints one
JSON object: per-seed AP, mean and standard deviation of each, and the mean gain.
"""
import argparse
import json
import statistics
from pathlib import Path

from lad_cli.demo import prepare_teacher, train_students


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("lad-seeds"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    args = p.parse_args()
    data, cache, teacher = prepare_teacher(args.out, args.overwrite, amp=args.amp)
    runs = {"baseline": [], "lad": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        aps = train_students(args.out / f"seed{seed}", data, cache, seed, args.overwrite, amp=args.amp)
        runs["baseline"].append(aps["baseline student"]["AP"])
        runs["lad"].append(aps["LAD student"]["AP"])
    summary = {name: {"AP": values, "mean": statistics.mean(values),
                      "std": statistics.stdev(values) if len(values) > 1 else 0.0} for name, values in runs.items()}
    gain = summary["lad"]["mean"] - summary["baseline"]["mean"]
    print(json.dumps({"teacher_AP": teacher["AP"], **summary, "gain": gain,
                      "gain_exceeds_spread": gain > max(summary["lad"]["std"], summary["baseline"]["std"])}, indent=2))


if __name__ == "__main__":
    main()
