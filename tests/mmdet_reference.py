"""mmdetection 3.3's TaskAlignedAssigner, ATSSAssigner and quality focal loss, loaded from
their files: they are pure PyTorch, but importing `mmdet.models` needs mmcv's compiled ops,
which a CPU-only `mmcv-lite` does not have. `load()` returns None when mmdet is absent
(`pip install mmdet==3.3.0 mmengine mmcv-lite==2.1.0`); the tests using it then skip."""
import importlib.util
import pathlib
import sys
import types
from types import SimpleNamespace


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load() -> SimpleNamespace | None:
    try:
        import mmdet
        from mmengine.structures import InstanceData
    except ImportError:
        return None
    base = pathlib.Path(mmdet.__file__).parent
    assigners = base / "models/task_modules/assigners"
    package = types.ModuleType("mmdet_assigners")
    package.__path__ = [str(assigners)]
    sys.modules.setdefault("mmdet_assigners", package)
    overlaps = _load("mmdet_bbox_overlaps", base / "structures/bbox/bbox_overlaps.py").bbox_overlaps
    tal = _load("mmdet_assigners.task_aligned_assigner", assigners / "task_aligned_assigner.py").TaskAlignedAssigner
    atss = _load("mmdet_assigners.atss_assigner", assigners / "atss_assigner.py").ATSSAssigner
    sys.modules.setdefault("mmdet.models.losses.utils", _load("mmdet_loss_utils", base / "models/losses/utils.py"))
    qfl = _load("mmdet_gfocal_loss", base / "models/losses/gfocal_loss.py").quality_focal_loss
    # Built without their registry (it would import mmdet.models): the attributes __init__ sets.
    tal_assigner = object.__new__(tal)
    tal_assigner.topk, tal_assigner.iou_calculator = 13, overlaps
    atss_assigner = object.__new__(atss)
    atss_assigner.topk, atss_assigner.alpha, atss_assigner.iou_calculator, atss_assigner.ignore_iof_thr = 9, None, overlaps, -1
    return SimpleNamespace(tal=tal_assigner, atss=atss_assigner, qfl=qfl, InstanceData=InstanceData)
