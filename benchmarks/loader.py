"""Share of the training step spent waiting for data, cached LAD, by number of loader workers,
with the cache on disk and on object storage.

    python -m benchmarks.loader [--workers 0,1,2] [--images 240] [--device cpu] [--stores disk,s3]

Writes the embedded dataset and a cache into a temp folder (`cached_setup`), then trains one epoch of the demo preset's student
from the cache with each worker count. The loop itself measures, per logged step, the time
blocked on the loader over the wall time (`data_wait` in metrics.jsonl); the first batch
of the epoch (worker start-up) is reported apart (`first_step_wait_fraction`). `s3`: the same
store copied to a bucket of moto's S3 server started on the loopback address (as tests/test_s3.py
does), read through `--cache s3://...`; `s3_over_disk` is the ratio of the waits in the same run,
`bytes_fetched_per_entry` what a reader fetches per entry read (each shard object once).
Prints one JSON object; `wait_over_0_workers` is against 0 workers of the same store.
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.synth import write_synth
from lad_cli.demo import MODEL, SCHEDULE, student_config
from lad_cli.distill.cache.build import run_assign
from lad_cli.distill.cache.remote import object_store
from lad_cli.distill.cache.store import AssignmentCache, anchor_counts
from lad_cli.distill.config import AssignConfig
from lad_cli.engine.checkpoint import model_checkpoint, save_atomic
from lad_cli.engine.loop import train
from lad_cli.model.anchors import AnchorLayout
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


def s3_copy(cache: Path) -> tuple[str, subprocess.Popen]:
    """moto's S3 server on a free loopback port (its own process), the AWS_* variables pointing
    at it, and `cache` uploaded to a bucket there: (the store's URL, the server)."""
    import obstore  # imported here: the disk-only benchmark needs neither obstore nor moto

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import boto3
    boto3.client("s3").create_bucket(Bucket="lad-bench")
    store = object_store("s3://lad-bench/cache.zarr")
    for file in (p for p in cache.rglob("*") if p.is_file()):
        obstore.put(store, file.relative_to(cache).as_posix(), file.read_bytes())
    return "s3://lad-bench/cache.zarr", server


def fetched_per_entry(url: str) -> dict:
    """Bytes a reader fetches per entry over a whole epoch in random order (the shard objects,
    each once), against the store's stored bytes per entry."""
    cache = AssignmentCache.open(url)
    counts = anchor_counts(cache.padded_hw(), AnchorLayout.from_dict(cache.provenance.anchor_layout))
    order = list(range(cache.num_entries))
    random.Random(0).shuffle(order)
    for e in order:
        cache.read(e, int(counts[e]))
    size, files = cache.bytes_on_disk()
    return {"bytes_fetched_per_entry": round(cache.fetched_bytes() / cache.num_entries, 1),
            "bytes_stored_per_entry": round(size / cache.num_entries, 1), "objects": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stores", default="disk,s3", help="disk, s3 (moto's server on the loopback address), or both")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="lad-loader-") as folder:  # about 1 GB of runs and stores
        result = measure(Path(folder), args)
    print(json.dumps(result))


def measure(root: Path, args) -> dict:
    data, cache = cached_setup(root, args.images, args.device)
    result = {"images": args.images, "batch": SCHEDULE["batch"], "size": MODEL["size"], "device": args.device,
              "cpu_threads": torch.get_num_threads()}
    server = None
    try:
        for store in args.stores.split(","):
            where = str(cache)
            if store == "s3":
                where, server = s3_copy(cache)
                result["s3"] = fetched_per_entry(where)
            result[store] = {**result.get(store, {}), **wait_by_workers(data, where, root / store, args)}
    finally:
        if server is not None:
            server.terminate()
    if "disk" in result and "s3" in result:
        for key in [k for k in result["s3"] if k.startswith("workers_")]:
            disk = result["disk"].get(key, {}).get("data_wait_fraction")
            if disk:
                result["s3"][key]["s3_over_disk"] = round(result["s3"][key]["data_wait_fraction"] / disk, 3)
    return result


def wait_by_workers(data: Path, cache: str, root: Path, args) -> dict:
    """One epoch from `cache` per worker count: the share of the step spent waiting for data."""
    result = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        run = root / f"workers{workers}"
        cfg = replace(student_config(data, seed=0, epochs=1), out=str(run), cache=cache, workers=workers,
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
    for key in [k for k in result if k != "workers_0"]:
        if base:
            result[key]["wait_over_0_workers"] = round(result[key]["data_wait_fraction"] / base, 3)
    return result


if __name__ == "__main__":
    main()
