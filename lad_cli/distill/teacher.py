"""A frozen teacher and the canonical assignment of an (image, view)."""
import contextlib
import platform
from pathlib import Path

import torch
from torch import Tensor

from ..assign.registry import Assigner, assigner_named
from ..data.coco import CocoSplit
from ..data.dataset import Batch
from ..errors import LadError
from ..model.build import load_detector
from ..model.detector import PAADetector
from ..runtime import autocast
from ..structures import Predictions


class Teacher:
    """A trained detector, always in eval mode, never under autograd.

    Its predictions are computed image by image: CPU and GPU convolution kernels give
    results that depend (in the last bits) on how many images share a batch, and the
    canonical assignment of an (image, view) must not depend on its batch-mates: it is
    what `lad assign --cache` stores and what online LAD recomputes, bit for bit.
    """

    def __init__(self, path: Path, device: torch.device, bf16: bool = False):
        self.path = Path(path)
        model, self.checkpoint = load_detector(self.path)
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.bf16 = bf16
        try:
            self.assigner = assigner_named(self.checkpoint.get("assigner"))  # checkpoints before TAL: PAA
        except KeyError:
            raise LadError(f"{self.path}: trained with an assigner this lad does not know "
                           f"({self.checkpoint['assigner'].get('name')})") from None

    @property
    def categories(self) -> list[dict]:
        return self.checkpoint["categories"]

    def check_data(self, split: CocoSplit, role: str = "teacher") -> None:
        split.check_categories(self.categories, f"{self.path}: {role}")

    def check_compatible(self, student: PAADetector, split: CocoSplit) -> None:
        if self.model.config.layout != student.config.layout:
            raise LadError(f"{self.path}: teacher anchor layout {self.model.config.layout} differs from the student's")
        self.check_data(split)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Predictions:
        self.model.eval()  # a training loop's .train() on its modules must never reach the teacher
        parts = []
        for image in images.split(1):
            with autocast(self.device, self.bf16):
                parts.append(self.model(image))
        return Predictions(*(torch.cat([getattr(p, f) for p in parts]).float() for f in ("cls_logits", "box_deltas", "iou_logits")))

    def assign(self, batch: Batch, assigner: Assigner | None = None) -> tuple[Tensor, Predictions]:
        """matched_idxs (N, A) of the batch (on the teacher's device) and the teacher's outputs;
        by the teacher's own assigner unless another is given."""
        with deterministic_cuda(self.device):
            pred = self.predict(batch.images)
            anchors, counts = self.model.anchors(batch.padded_hw, self.device)
            return (assigner or self.assigner).assign(anchors, counts, pred, batch.targets), pred

    def class_target(self, batch: Batch, matched: Tensor, pred: Predictions, assigner: Assigner) -> Tensor | None:
        """The classification target the teacher gives the positives of `matched`: TAL's
        normalised alignment, (N, A) float32 in [0, 1] on its device; None where the assigner
        trains on one-hot targets (PAA)."""
        anchors, _ = self.model.anchors(batch.padded_hw, self.device)
        return assigner.soft_target(anchors, pred, matched, batch.targets)

    @staticmethod
    def largest_output(pred: Predictions) -> Tensor:
        """The largest |value| among the teacher's outputs, 0-dim float32: NaN or inf when any
        output is. A teacher whose outputs are not finite assigns every anchor to background
        without any error downstream, so its users check this (no sync: they decide when)."""
        return torch.stack([t.detach().float().abs().amax() for t in (pred.cls_logits, pred.box_deltas, pred.iou_logits)]).amax()

    def numerics(self) -> dict:
        """What decides the bits of this teacher's outputs besides its file and the data (the
        store records it; docs/cache.md says when two stores are bit-identical): the
        device type and model, torch's intra-op thread count (CPU convolutions sum in another
        order with another count), torch's version and the precision; on CUDA also the CUDA and
        cuDNN versions and the kernel settings of `deterministic_cuda`."""
        record = {"device": self.device.type, "device_name": device_name(self.device),
                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "precision": "bf16" if self.bf16 else "float32"}
        if self.device.type == "cuda":
            record.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), **CUDA_KERNELS)
        return record


# The teacher pass on CUDA: cuDNN's deterministic algorithms, no autotuning (benchmark mode
# picks kernels by timing, so the kernel, and its last bits, can change from run to run), no
# TF32 (float32 convolutions and matmuls at full precision). Not torch.use_deterministic_algorithms:
# it is process-wide, needs CUBLAS_WORKSPACE_CONFIG before CUDA starts, and raises on ops
# without a deterministic kernel, which an online-LAD student's own step may use.
CUDA_KERNELS = {"cudnn_deterministic": True, "cudnn_benchmark": False, "tf32": False, "deterministic_algorithms": False}


@contextlib.contextmanager
def deterministic_cuda(device: torch.device):
    """CUDA_KERNELS for the teacher pass, the previous settings restored after (an online-LAD
    student keeps its own); nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def device_name(device: torch.device) -> str:
    """The CUDA device's name, or the CPU's model name (Linux: /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
