"""student-train's inputs: the input size, views and anchors follow the cache or the teacher."""
from pathlib import Path

from ..cache import AssignmentCache
from .checkpoint import load_checkpoint

DEFAULTS = {"size": 800, "max_size": 1333, "views": "orig,flip", "anchor_scale": 8}


def resolve_student_inputs(options: dict, resume: bool) -> dict:
    """Fill --size, --max-size, --views and --anchor-scale that were not given from the cache
    (its views are the training views) or from the teacher checkpoint; explicit options that
    contradict a cache are refused, naming the field, when the source is built."""
    opts = dict(options)
    found = {} if resume else _from_source(opts)  # on resume the run's own config.json decides
    for key, default in DEFAULTS.items():
        if opts.get(key) is None:
            opts[key] = found.get(key, default)
    return opts


def _from_source(opts: dict) -> dict:
    """Input size, views and anchor scale recorded by the cache or the teacher checkpoint."""
    if opts.get("cache"):
        cache = AssignmentCache.open(Path(opts["cache"]))
        views = cache.attrs["views"]
        base = next((v for v in views if "@" not in v["name"]), views[0])
        return {"size": base["short_side"], "max_size": base["max_side"], "views": ",".join(v["name"] for v in views),
                "anchor_scale": cache.provenance.anchor_layout["octave_base_scale"]}
    if opts.get("teacher"):
        ckpt = load_checkpoint(Path(opts["teacher"]))
        return {"size": ckpt["size"], "max_size": ckpt["max_size"],
                "anchor_scale": ckpt["detector"]["layout"]["octave_base_scale"]}
    return {}
