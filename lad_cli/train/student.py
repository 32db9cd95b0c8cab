"""student-train's inputs: the input size and views follow the cache or the teacher."""
from pathlib import Path

from ..cache import AssignmentCache
from ..errors import LadError
from .checkpoint import load_checkpoint


def resolve_student_inputs(options: dict, resume: bool) -> dict:
    """Fill --size, --max-size and --views from the cache (its views are the training views)
    or from the teacher checkpoint (its training size); explicit options that contradict
    a cache are refused when the source is built."""
    opts = dict(options)
    if resume:  # the run's own config.json decides
        return {**opts, "size": opts["size"] or 800, "max_size": opts["max_size"] or 1333, "views": opts["views"] or "orig,flip"}
    if opts.get("cache"):
        cache = AssignmentCache.open(Path(opts["cache"]))
        views = cache.attrs["views"]
        base = next((v for v in views if "@" not in v["name"]), views[0])
        opts["size"] = opts["size"] or base["short_side"]
        opts["max_size"] = opts["max_size"] or base["max_side"]
        opts["views"] = opts["views"] or ",".join(v["name"] for v in views)
    elif opts.get("teacher"):
        ckpt = load_checkpoint(Path(opts["teacher"]))
        opts["size"] = opts["size"] or ckpt["size"]
        opts["max_size"] = opts["max_size"] or ckpt["max_size"]
    if opts.get("peer_arch") and not opts.get("colearn"):
        raise LadError("--peer-arch and --peer-init need --colearn")
    return {**opts, "size": opts["size"] or 800, "max_size": opts["max_size"] or 1333, "views": opts["views"] or "orig,flip"}
