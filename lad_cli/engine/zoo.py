"""`lad import`: an mmdetection PAA checkpoint written as a lad checkpoint (the network
mapping is `model.mmdet_import`; here: the file, its categories, provenance, the output)."""
from pathlib import Path

from ..assign.registry import ASSIGNERS
from ..data.coco import load_split, locate_split
from ..distill.cache.store import file_sha256
from ..errors import LadError
from ..files import read_torch_file
from ..model.build import CHECKPOINT_FORMAT, build_detector, load_checkpoint
from ..model.mmdet_import import mmdet_network
from ..outputs import Kind, claim
from .checkpoint import save_atomic

# COCO 2017's 80 detection categories in id order: mmdetection's label i is the i-th of these.
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis "
    "snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy_bear hair_drier toothbrush").split()
COCO_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91))
COCO_CATEGORIES = [{"id": i, "name": n.replace("_", " ")} for i, n in zip(COCO_IDS, COCO_NAMES)]
# mmdetection's test scale for COCO (Resize scale=(1333, 800), keep_ratio): lad's size, max_size.
SIZE, MAX_SIZE = 800, 1333


def _is_lad_checkpoint(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except LadError:
        return False
    return True


CHECKPOINT = Kind("lad checkpoint", folder=False, is_own=_is_lad_checkpoint)


def read_mmdet_file(path: Path):
    """The checkpoint's object, weights_only. A training checkpoint of mmengine's runner also
    holds its message hub (logging objects), which weights_only refuses: its published form
    (mmdetection's tools/model_converters/publish_model.py) keeps only meta and weights."""
    try:
        return read_torch_file(path, "mmdetection checkpoint", "torch checkpoint")
    except LadError as exc:
        if "refused" in str(exc):
            raise LadError(f"{exc}; publish it first with mmdetection's tools/model_converters/publish_model.py "
                           "(it keeps meta and state_dict only)") from None
        raise


def _categories(classes: list[str] | None, num_classes: int, path: Path, data, split: str, ann, images) -> tuple[list, dict]:
    """The imported network's categories and where they came from: --data/--ann (their names
    must be the file's classes, in order, where it records them), else the file's classes
    (COCO's ids when they are COCO's 80), else COCO's 80."""
    if data is not None or ann is not None or images is not None:
        coco = load_split(*locate_split(data, split, ann, images))
        names = [c["name"] for c in coco.categories]
        if len(names) != num_classes:
            raise LadError(f"{coco.ann_file}: {len(names)} categories, but {path} predicts {num_classes} classes")
        if classes is not None and [n.lower() for n in names] != [c.lower() for c in classes]:
            i = next(i for i, (a, b) in enumerate(zip(names, classes)) if a.lower() != b.lower())
            raise LadError(f"{coco.ann_file}: category {i} (by id) is {names[i]!r}, the checkpoint's class {i} is "
                           f"{classes[i]!r}: its categories are not those the network was trained on")
        return coco.categories, {"classes_from": str(coco.ann_file), "annotations_sha256": coco.sha256}
    if classes is None:
        if num_classes != len(COCO_CATEGORIES):
            raise LadError(f"{path}: {num_classes} classes and no class names in its meta: give their dataset "
                           "with --data or --ann/--images")
        return COCO_CATEGORIES, {"classes_from": "COCO 2017 (default)"}
    if len(classes) != num_classes:
        raise LadError(f"{path}: its meta names {len(classes)} classes, its head predicts {num_classes}")
    if classes == [c["name"] for c in COCO_CATEGORIES]:
        return COCO_CATEGORIES, {"classes_from": "the checkpoint's meta (COCO 2017's ids)"}
    return ([{"id": i + 1, "name": n} for i, n in enumerate(classes)],
            {"classes_from": "the checkpoint's meta (ids 1..N: give --data for the dataset's own ids)"})


def import_mmdet(path: Path, out: Path, data=None, split: str = "val", ann=None, images=None,
                 overwrite: bool = False, size: int = SIZE, max_size: int = MAX_SIZE) -> dict:
    """Write `out`, a lad checkpoint of the mmdetection PAA checkpoint `path` whose input is
    resized to `size` x `max_size` (mmdetection's COCO test scale by default); the summary."""
    path, out = Path(path), Path(out)
    net = mmdet_network(read_mmdet_file(path), str(path))
    categories, origin = _categories(net.classes, net.config.num_classes, path, data, split, ann, images)
    sha = file_sha256(path)
    imported = {"file": path.name, "sha256": sha, "format": "mmdetection", **net.versions, **origin}
    versions = ", ".join(f"{k} {v}" for k, v in net.versions.items())
    ckpt = {"format": CHECKPOINT_FORMAT, "model": net.state, "detector": net.config.to_dict(), "categories": categories,
            "size": size, "max_size": max_size, "assigner": ASSIGNERS["paa"].record(), "imported_from": imported,
            "training": {"assignment": None, "note": f"imported from mmdetection's {path.name} (sha256 {sha[:16]}..."
                                                     f"{f', {versions}' if versions else ''})"}}
    build_detector(ckpt, out)  # the weights load into lad's network
    with claim(out, CHECKPOINT, overwrite, inputs=[path]) as output:
        save_atomic(ckpt, out)
        output.commit()
    return {"checkpoint": str(out), "arch": net.config.arch, "num_classes": net.config.num_classes,
            "anchor_layout": net.config.layout.to_dict(), "imported_from": imported}
