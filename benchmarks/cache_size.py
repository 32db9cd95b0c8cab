"""Bytes per (image, view) entry and files of the assignment cache.

    python -m benchmarks.cache_size [--cache lad-demo/teacher.zarr] [--entries 10000]

Two measurements: an existing cache of the embedded dataset (e.g. the demo's), and a
COCO-sized store written with synthetic assignments (1333x800 input, 7 GTs and ~300
positives per image on average, positives in compact groups around each GT as PAA picks
them). The sparse size (4 bytes anchor index + 2 bytes GT index per positive) is printed
as the baseline the compressed-dense layout is compared with. The COCO-sized store is
written twice, the second time as a TAL teacher's (format 2: each positive's alignment
beside its assignment, here uniform in 1..255, the worst case for compression), and the
ratio of the two sizes printed. Prints one JSON object.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lad_cli.data.views import padded_hw
from lad_cli.distill.cache.store import AssignmentCache, Provenance
from lad_cli.distill.cache.verify import cache_info
from lad_cli.model.anchors import AnchorLayout


def synthetic_assignment(rng: np.random.Generator, layout: AnchorLayout, hw: tuple[int, int]) -> np.ndarray:
    """(A,) int16: ~7 GTs, each with ~43 positives spread over 2-3 adjacent levels near its centre."""
    shapes = layout.level_shapes(hw)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    matched = np.full(starts[-1], -1, np.int16)
    for gt in range(rng.poisson(7)):
        cy, cx = rng.uniform(0, 1, size=2)
        first = rng.integers(0, 3)
        for level in range(first, first + rng.integers(2, 4)):
            h, w = shapes[level]
            y0, x0 = int(cy * (h - 1)), int(cx * (w - 1))
            ys, xs = np.meshgrid(np.arange(y0 - 3, y0 + 4), np.arange(x0 - 3, x0 + 4), indexing="ij")
            ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            cells = (ys[ok] * w + xs[ok])
            take = rng.choice(cells, size=min(len(cells), rng.integers(10, 25)), replace=False)
            matched[starts[level] + take] = gt
    return matched


def coco_sized(entries: int, shard_entries: int, alignment: bool = False) -> dict:
    layout = AnchorLayout()
    hw = padded_hw(800, 1333, layout.size_divisor)
    anchors = sum(layout.num_per_level(hw))
    rng = np.random.default_rng(0)
    provenance = Provenance("0" * 64, "0" * 64, [{"name": "orig", "short_side": 800, "max_side": 1333, "flip": False}],
                            layout.to_dict(), {}, [])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coco.zarr"
        AssignmentCache.create(path, provenance, list(range(entries)), np.tile(hw, (entries, 1)), anchors, shard_entries,
                               alignment)
        cache = AssignmentCache.open(path, mode="r+")
        start, positives = time.perf_counter(), 0
        counts = np.full(cache.shard_entries, anchors)
        for shard in range(cache.num_shards):
            r = cache.shard_range(shard)
            rows = np.stack([synthetic_assignment(rng, layout, hw) for _ in r])
            positives += int((rows >= 0).sum())
            aligned = np.where(rows >= 0, rng.integers(1, 256, rows.shape), 0).astype(np.int16) if alignment else None
            cache.write_shard(shard, rows, counts[: len(r)], np.tile(hw, (len(r), 1)), aligned)
        seconds = time.perf_counter() - start
        size, files = cache.bytes_on_disk()
    return {"input": "1333x800", "anchors": anchors, "entries": entries, "positives_per_entry": round(positives / entries, 1),
            "bytes_per_entry": round(size / entries, 1), "sparse_bytes_per_entry": round(6 * positives / entries, 1),
            "files": files, "files_per_10000_entries": round(files * 10000 / entries, 1), "write_seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cache", type=Path, default=Path("lad-demo/teacher.zarr"), help="a cache of the embedded dataset")
    p.add_argument("--entries", type=int, default=10000)
    p.add_argument("--shard-entries", type=int, default=4096)
    args = p.parse_args()
    plain, aligned = (coco_sized(args.entries, args.shard_entries, alignment) for alignment in (False, True))
    aligned["bytes_ratio_to_assignment_only"] = round(aligned["bytes_per_entry"] / plain["bytes_per_entry"], 3)
    result = {"coco_sized": plain, "coco_sized_with_alignment": aligned,
              "targets": {"bytes_per_coco_entry": 4096, "files_per_10000_entries": 10}}
    if (args.cache / "zarr.json").is_file():
        store = AssignmentCache.open(args.cache)
        info = cache_info(args.cache)
        positives = sum(int((slab[:, :store.max_anchors] >= 0).sum()) for _, slab in store.slabs())
        result["embedded"] = {"cache": str(args.cache), "entries": info["entries"], "bytes_per_entry": info["bytes_per_entry"],
                              "sparse_bytes_per_entry": round(6 * positives / info["entries"], 1), "files": info["files"],
                              "class_target": info["class_target"]}
    else:
        result["embedded"] = f"no cache at {args.cache}: run `lad demo` first or pass --cache"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
