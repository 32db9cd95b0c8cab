"""`lad export`: trace the deployed graph and write it as ONNX or TorchScript, whole or not at all."""
import contextlib
import json
import time
import warnings
import zipfile
from pathlib import Path

import torch

from ..choices import EXPORT_FORMATS as FORMATS
from ..data.coco import load_split, locate_split
from ..data.views import padded_hw
from ..errors import LadError
from ..model.build import load_detector
from ..model.postprocess import InferenceParams
from ..outputs import Kind, write_file
from ..outputs import claim as claim_output
from .check import check_export
from .config import ExportConfig
from .graph import INPUT_NAMES, OUTPUT_NAMES, DeployedDetector, export_metadata

METADATA_KEY = "lad"  # ONNX metadata_props key / TorchScript extra file "lad.json": export_metadata's JSON
MIN_OPSET = 14  # NonMaxSuppression needs 11, HardSwish (MobileNetV3) 14


def run_export(cfg: ExportConfig) -> dict:
    """Write the checkpoint's detector to `cfg.out`; the summary (with `check`: the eager and
    exported models scored on a split, and their detections compared)."""
    if cfg.format not in FORMATS:
        raise LadError(f"unknown --format {cfg.format!r}: use {' or '.join(FORMATS)}")
    if cfg.size is not None and cfg.format == "torchscript":
        raise LadError("--size fixes an ONNX graph's input; a TorchScript trace takes every multiple of 128")
    if cfg.opset < MIN_OPSET:
        raise LadError(f"--opset {cfg.opset}: lad graphs need opset {MIN_OPSET} or later")
    out = Path(cfg.out)
    with claim_output(out, EXPORTED, cfg.overwrite, [cfg.checkpoint, cfg.check]):
        return _export(cfg, out)


def _export(cfg: ExportConfig, out: Path) -> dict:
    net, ckpt = load_detector(Path(cfg.checkpoint))
    divisor = net.config.layout.size_divisor
    if cfg.size is not None and any(s <= 0 or s % divisor for s in cfg.size):
        raise LadError(f"--size {cfg.size[0]} {cfg.size[1]}: height and width must be positive multiples of {divisor}")
    split = None
    if cfg.check is not None:  # read before the export, so that a wrong folder costs nothing
        split = load_split(*locate_split(cfg.check, cfg.check_split))
        split.check_categories(ckpt["categories"], str(cfg.checkpoint))
    params = InferenceParams()
    graph = DeployedDetector(net, params)
    # Traced on an input of the fixed size, or of the padded training size (the graph then takes any).
    hw = tuple(cfg.size) if cfg.size is not None else padded_hw(ckpt["size"], ckpt["max_size"], divisor)
    example = (torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0)), torch.tensor(hw, dtype=torch.int64))
    metadata = export_metadata(net, ckpt, params, cfg.size)
    start = time.perf_counter()
    if cfg.format == "onnx":
        write_file(out, lambda tmp: _write_onnx(graph, example, tmp, metadata, cfg.size is None, cfg.opset))
    else:
        write_file(out, lambda tmp: _write_torchscript(graph, example, tmp, metadata))
    shape = [1, 3, *(hw if cfg.size is not None else ("H", "W"))]
    summary = {"out": str(out), "format": cfg.format, "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - start, 2),
               "inputs": {"image": shape, "image_size": [2]}, "size_divisor": divisor, "outputs": list(OUTPUT_NAMES),
               "opset": cfg.opset if cfg.format == "onnx" else None}
    if split is not None:
        summary["check"] = check_export(out, cfg.format, net, ckpt, split)
    return summary


def is_exported(path: Path) -> bool:
    """A file `lad export` wrote: a TorchScript archive with lad.json, or an ONNX model with
    the `lad` metadata entry."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"extra/{METADATA_KEY}.json") for name in archive.namelist())
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX (or no onnx package): not recognised, so never replaced
        return False
    return any(entry.key == METADATA_KEY for entry in model.metadata_props)


EXPORTED = Kind("exported model", folder=False, is_own=is_exported)


@contextlib.contextmanager
def _quiet():
    """The exporters' notes on tracing (sizes traced as tensors, the TorchScript-based ONNX
    exporter's deprecation) are expected here; `--check` compares the result with the eager model."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


def _write_onnx(graph: DeployedDetector, example, path: Path, metadata: dict, dynamic: bool, opset: int) -> None:
    try:
        import onnx
    except ImportError:
        raise LadError("--format onnx needs the onnx package: pip install onnx (or lad-cli[export])") from None
    detections = {name: {0: "detections"} for name in OUTPUT_NAMES}
    axes = {"image": {2: "height", 3: "width"}, **detections} if dynamic else detections
    # The TorchScript-based exporter: it maps torchvision's nms to ONNX NonMaxSuppression.
    with _quiet(), torch.no_grad():
        torch.onnx.export(graph, example, str(path), dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
    model = onnx.load(str(path))
    model.doc_string = "lad PAA detector: network, box decoding, class-wise NMS and score voting (docs/method.md, Export)"
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_torchscript(graph: DeployedDetector, example, path: Path, metadata: dict) -> None:
    # A trace records the input's shape as tensors (the anchors and per-level counts follow it),
    # so the traced module takes every multiple of 128, as the ONNX graph with dynamic axes.
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
