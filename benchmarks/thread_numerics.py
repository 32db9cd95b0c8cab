"""How much `lad assign --cache` depends on the CPU's intra-op thread count.

    python -m benchmarks.thread_numerics [--teacher lad-demo/teacher/last.pt] [--data lad-demo/data]
        [--split train] [--views orig,flip] [--amp auto] [--batch 8] [--threads 2,1] [--out DIR]

Makes three stores of the same teacher and data on the CPU, each in its own process with
OMP_NUM_THREADS and torch.set_num_threads at the count given: the first count twice (the
baseline: one thread count is bit-exact, so these two must be 100% identical) and the
second count once. Compares each pair anchor by anchor and prints one JSON object: total
anchors, identical anchors, their share, the entries that differ (with the first few named),
both digests, the threads each store recorded, and the share of the other count relative to
the baseline's. The stores are made in a temp folder unless --out keeps them.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lad_cli.distill.cache.store import AssignmentCache, anchor_counts
from lad_cli.model.anchors import AnchorLayout

ROOT = Path(__file__).resolve().parent.parent
# The CLI with torch's intra-op thread count set from OMP_NUM_THREADS (torch reads it too; set
# twice so that no default of either decides).
CLI_WITH_THREADS = ("import os, torch; torch.set_num_threads(int(os.environ['OMP_NUM_THREADS'])); "
                    "from lad_cli.cli import main; main()")


def make_store(args, threads: int, path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", CLI_WITH_THREADS, "assign", "--teacher", args.teacher, "--data", args.data,
               "--split", args.split, "--views", args.views, "--amp", args.amp, "--batch", str(args.batch),
               "--device", "cpu", "--cache", str(path), "--overwrite"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lad assign with {threads} thread(s) failed: {done.stderr.strip()[-2000:]}")


def compare(a_path: Path, b_path: Path) -> dict:
    """Anchor by anchor: how many of the two stores' assignments are identical."""
    a, b = AssignmentCache.open(a_path), AssignmentCache.open(b_path)
    counts = anchor_counts(a.padded_hw(), AnchorLayout.from_dict(a.provenance.anchor_layout))
    if not np.array_equal(counts, anchor_counts(b.padded_hw(), AnchorLayout.from_dict(b.provenance.anchor_layout))):
        sys.exit(f"{a_path} and {b_path} hold different entries: not stores of one teacher and dataset")
    identical, differ = 0, []
    for (r, slab_a), (_, slab_b) in zip(a.slabs(), b.slabs()):
        for e, row_a, row_b in zip(r, slab_a, slab_b):
            same = int((row_a[:counts[e]] == row_b[:counts[e]]).sum())
            identical += same
            if same < counts[e]:
                differ.append(e)
    total = int(counts.sum())
    return {"threads": [[n["threads"] for n in a.numerics()], [n["threads"] for n in b.numerics()]],
            "anchors": total, "identical_anchors": identical, "share_identical": identical / max(1, total),
            "entries_differ": len(differ), "first_entries_differ": [a.label(e) for e in differ[:5]],
            "digests": [a.digest(counts), b.digest(counts)]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", default="lad-demo/teacher/last.pt")
    p.add_argument("--data", default="lad-demo/data")
    p.add_argument("--split", default="train")
    p.add_argument("--views", default="orig,flip")
    p.add_argument("--amp", default="auto", help="as `lad assign --amp` (the demo's cache: auto)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", default="2,1", help="BASELINE,OTHER: the baseline count runs twice")
    p.add_argument("--out", default=None, help="keep the three stores in this folder")
    args = p.parse_args()
    baseline, other = (int(t) for t in args.threads.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        stores = {name: folder / f"{name}.zarr" for name in ("baseline", "baseline_again", "other")}
        for name, threads in (("baseline", baseline), ("baseline_again", baseline), ("other", other)):
            make_store(args, threads, stores[name])
        same = compare(stores["baseline"], stores["baseline_again"])
        changed = compare(stores["baseline"], stores["other"])
        numerics = AssignmentCache.open(stores["baseline"]).numerics()
    print(json.dumps({"teacher": args.teacher, "data": args.data, "split": args.split, "views": args.views,
                      "numerics": numerics, f"threads_{baseline}_vs_{baseline}": same,
                      f"threads_{baseline}_vs_{other}": changed,
                      "share_ratio_vs_baseline": changed["share_identical"] / max(same["share_identical"], 1e-12),
                      "baseline_bit_exact": same["identical_anchors"] == same["anchors"]
                      and same["digests"][0] == same["digests"][1]}, indent=2))


if __name__ == "__main__":
    main()
