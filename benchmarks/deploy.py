"""What deploying a student costs on the CPU: the exported graph in onnxruntime against the eager
model, and a MobileNetV2 student against a ResNet-50 teacher.

    python -m benchmarks.deploy [--student CKPT] [--teacher CKPT] [--runs 10]

Per-image latency (median of --runs after 2 warm-up runs, batch 1) at the demo size (a 160x200
image, padded to 256x256) and at the COCO size (800x1333, padded to 896x1408):
- the student exported by `lad export` (network, decoding, NMS, score voting in one ONNX graph)
  in onnxruntime against the eager model (network + `model.postprocess`) in float32 and under
  bf16 autocast (lad's default on CPUs with bf16 units);
- the student's and the teacher's eager networks (forward only, float32), with their parameters,
  FLOPs (torch.utils.flop_counter) and file sizes (ONNX graph, float32 state dict).
Without checkpoints both networks are new (seeded), with the demo's head (width 64, 2 convs per
tower, anchor scale 4, 6 classes); post-processing time depends on how many boxes pass the score
threshold, so the JSON gives the detection counts. Prints one JSON object.
"""
import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from lad_cli.engine.info import count_flops
from lad_cli.export.config import ExportConfig
from lad_cli.export.write import run_export
from lad_cli.model.build import load_detector, new_detector
from lad_cli.model.postprocess import postprocess
from lad_cli.runtime import autocast, use_bf16

SIZES = {"demo": ((160, 200), (256, 256)), "coco": ((800, 1333), (896, 1408))}  # image, padded input


def timed(fn, runs: int) -> float:
    """Median seconds of `fn()` over `runs` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checkpoint_file(arch: str, path: str | None, folder: Path) -> Path:
    """The given checkpoint, or a new seeded detector with the demo's head saved as one."""
    if path:
        return Path(path)
    from types import SimpleNamespace

    from lad_cli.engine.checkpoint import model_checkpoint, save_atomic

    torch.manual_seed(0)
    net = new_detector(arch, 6, 64, 2, None, anchor_scale=4)
    categories = [{"id": i + 1, "name": f"class{i}"} for i in range(6)]
    split = SimpleNamespace(categories=categories, sha256="")
    save_atomic(model_checkpoint(net, split, SimpleNamespace(size=160, max_size=256, assigner="paa")), folder / f"{arch}.pt")
    return folder / f"{arch}.pt"


def state_bytes(net) -> int:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.tell()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--student", help="student checkpoint [default: a new MobileNetV2 detector]")
    p.add_argument("--teacher", help="teacher checkpoint [default: a new ResNet-50 detector]")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    cpu = torch.device("cpu")
    bf16 = use_bf16(cpu, "auto")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores as torch
    result = {"threads": torch.get_num_threads(), "bf16_units": bf16, "runs": args.runs, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"student": checkpoint_file("mobilenet_v2", args.student, tmp),
                 "teacher": checkpoint_file("resnet50", args.teacher, tmp)}
        nets = {name: load_detector(path)[0].eval() for name, path in files.items()}
        for name, path in files.items():
            run_export(ExportConfig(str(path), str(tmp / f"{name}.onnx")))
        session = onnxruntime.InferenceSession(str(tmp / "student.onnx"), options, providers=["CPUExecutionProvider"])
        result["models"] = {name: {"arch": net.config.arch, "checkpoint": str(files[name]) if getattr(args, name) else "new",
                                   "parameters": sum(p.numel() for p in net.parameters()),
                                   "onnx_bytes": (tmp / f"{name}.onnx").stat().st_size, "state_dict_bytes": state_bytes(net)}
                            for name, net in nets.items()}
        for size, (image_hw, padded) in SIZES.items():
            image = torch.randn(1, 3, *padded, generator=torch.Generator().manual_seed(0))
            image[..., image_hw[0]:, :] = 0  # the padding of an image_hw image
            image[..., image_hw[1]:] = 0
            student = nets["student"]
            anchors, counts = student.anchors(padded, cpu)

            def eager(use_bf16: bool):
                with torch.no_grad(), autocast(cpu, use_bf16):
                    pred = student(image)
                return postprocess(pred, anchors, counts, [image_hw])[0]

            feeds = {"image": image.numpy(), "image_size": np.array(image_hw, np.int64)}
            row = {"image_hw": list(image_hw), "padded_hw": list(padded),
                   "detections": {"eager": len(eager(False).scores), "onnxruntime": len(session.run(None, feeds)[1])},
                   "student_onnxruntime_s": timed(lambda: session.run(None, feeds), args.runs),
                   "student_eager_float32_s": timed(lambda: eager(False), args.runs)}
            row["student_eager_bf16_s"] = timed(lambda: eager(True), args.runs) if bf16 else None
            for name, net in nets.items():
                with torch.no_grad():
                    row[f"{name}_network_float32_s"] = timed(lambda: net(image), args.runs)
                row[f"{name}_gflops"] = round(count_flops(net, padded)["total"] / 1e9, 3)
            row["onnxruntime_over_eager_float32"] = row["student_onnxruntime_s"] / row["student_eager_float32_s"]
            if bf16:
                row["onnxruntime_over_eager_bf16"] = row["student_onnxruntime_s"] / row["student_eager_bf16_s"]
            row["student_over_teacher_latency"] = row["student_network_float32_s"] / row["teacher_network_float32_s"]
            row["student_over_teacher_flops"] = row["student_gflops"] / row["teacher_gflops"]
            result["sizes"][size] = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    models = result["models"]
    result["student_over_teacher_parameters"] = round(models["student"]["parameters"] / models["teacher"]["parameters"], 4)
    result["student_over_teacher_onnx_bytes"] = round(models["student"]["onnx_bytes"] / models["teacher"]["onnx_bytes"], 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
