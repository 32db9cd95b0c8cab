"""mmdetection 3.3 as the outside reference of the tests (a test dependency: these never
skip). Its models are pure PyTorch, but importing `mmdet.models` imports every compiled op of
`mmcv.ops`, which the CPU-only `mmcv-lite` does not have: `import_mmdet` puts a stand-in for
`mmcv.ops` first on the import path, whose NMS is torchvision's and whose other ops refuse to
be built (the models compared here use none of them)."""
import importlib.abc
import importlib.machinery
import sys
import types
from types import SimpleNamespace

import torch
import torchvision


def _batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
    """mmcv.ops.batched_nms in torchvision: the kept boxes with their scores, by descending
    score, and their indices."""
    iou = dict(nms_cfg).get("iou_threshold", 0.5)
    keep = torchvision.ops.nms(boxes, scores, iou) if class_agnostic else torchvision.ops.batched_nms(boxes, scores, idxs, iou)
    return torch.cat([boxes[keep], scores[keep, None]], -1), keep


class _CompiledOps(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is compiled; mmcv-lite has none")
        return type(name, (), {"__init__": refuse})


class _OpsFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _CompiledOps(spec.name)
        module.__path__, module.batched_nms = [], _batched_nms
        return module

    def exec_module(self, module):
        pass


def import_mmdet():
    """The `mmdet` package with every module registered (`mmdet.models` importable)."""
    if not any(isinstance(f, _OpsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OpsFinder())
    import mmdet
    from mmdet.utils import register_all_modules
    register_all_modules()
    return mmdet


def load() -> SimpleNamespace:
    """mmdetection's TaskAlignedAssigner (topk 13), ATSSAssigner (topk 9) and quality focal loss."""
    import_mmdet()
    from mmdet.models.losses.gfocal_loss import quality_focal_loss
    from mmdet.models.task_modules.assigners import ATSSAssigner, TaskAlignedAssigner
    from mmdet.structures.bbox import bbox_overlaps
    from mmengine.structures import InstanceData

    # Built as their configs build them, with mmdetection's own IoU function.
    tal = object.__new__(TaskAlignedAssigner)
    tal.topk, tal.iou_calculator = 13, bbox_overlaps
    atss = object.__new__(ATSSAssigner)
    atss.topk, atss.alpha, atss.iou_calculator, atss.ignore_iof_thr = 9, None, bbox_overlaps, -1
    return SimpleNamespace(tal=tal, atss=atss, qfl=quality_focal_loss, InstanceData=InstanceData)
