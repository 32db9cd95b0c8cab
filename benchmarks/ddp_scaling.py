"""Cached-LAD student-train throughput: one process vs `torchrun` with N processes (DDP).

    python -m benchmarks.ddp_scaling [--nproc 2] [--images 240] [--epochs 2] [--device cpu]

Both runs are subprocesses with the same command line (demo preset student, `--batch 8`
global, cache from `cached_setup`), so both pay the same start-up; on the CPU the single
process gets all N cores as threads and each of the N processes gets one. images/s = the
images trained / the command's wall time. Prints one JSON object with the ratio.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.loader import cached_setup
from lad_cli.demo import MODEL, SCHEDULE


def timed_run(cmd: list[str], threads: int) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lad-ddp-"))
    data, cache = cached_setup(root, args.images, args.device)
    preset = [f"--{k.replace('_', '-')}={v}" for k, v in {**MODEL, **SCHEDULE}.items() if k not in ("device", "log_every")]
    train = ["student-train", "--data", str(data), "--cache", str(cache), "--val-split", "", "--epochs", str(args.epochs),
             "--device", args.device, "--log-every", "1000", *preset]
    cores = os.cpu_count() or 1
    one = timed_run([sys.executable, "-m", "lad_cli", *train, "--out", str(root / "one")], cores if args.device == "cpu" else 1)
    many = timed_run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                      "-m", "lad_cli", *train, "--out", str(root / "many")], max(1, cores // args.nproc))
    images = args.images * args.epochs  # one view per image per epoch
    print(json.dumps({"device": args.device, "images_per_epoch": args.images, "epochs": args.epochs, "batch": SCHEDULE["batch"],
                      "one_process_images_per_s": round(images / one, 2),
                      f"torchrun_{args.nproc}_images_per_s": round(images / many, 2),
                      "ratio": round(one / many, 3), "one_process_s": round(one, 1), "torchrun_s": round(many, 1)}))


if __name__ == "__main__":
    main()
