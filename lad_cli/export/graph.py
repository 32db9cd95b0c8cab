"""The deployed graph: network, box decoding, per-level top-k, score threshold, clipping,
class-wise NMS, score voting and the cap, for one image (docs/method.md, "Export")."""
import torch
from torch import Tensor, nn

from ..data.views import MEAN, STD
from ..model.coder import decode
from ..model.detector import PAADetector
from ..model.postprocess import InferenceParams, detection_scores, select_detections

INPUT_NAMES = ("image", "image_size")
OUTPUT_NAMES = ("boxes", "scores", "labels")
FORMAT = "lad-export/1"


class DeployedDetector(nn.Module):
    """forward(image, image_size) -> (boxes, scores, labels), `lad eval`'s detections of one image.

    image: float32 (1, 3, H, W), RGB resized as the checkpoint's view (shorter side `size`,
      longer at most `max_size`, bilinear, antialiased), normalised ((x - MEAN) / STD, 0-255
      scale), zero-padded at the bottom and right to H, W multiples of 128.
    image_size: int64 (2,), the resized image's height and width before padding (boxes are
      clipped to it).
    boxes: float32 (D, 4) x1, y1, x2, y2 in the resized image's pixels (divide by the resize
      scale for original pixels); scores: float32 (D,) in decreasing order; labels: int64 (D,)
      indices into the checkpoint's categories. D <= max_detections (100).
    """

    def __init__(self, net: PAADetector, params: InferenceParams = InferenceParams()):
        super().__init__()
        self.net = net
        self.params = params
        # Exporters put a module back into the mode it had: a module made in train mode would
        # leave the network's BatchNorm in train mode after the export.
        self.eval()

    def forward(self, image: Tensor, image_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = self.net(image)
        layout = self.net.config.layout
        # From the input's shape, so that a graph traced at one size serves every size.
        height, width = image.shape[-2], image.shape[-1]
        shapes = [(height // s, width // s) for s in layout.strides]
        anchors = layout.grid_anchors(shapes, image.device)
        scores = detection_scores(pred, self.params.iou_quality)[0]
        boxes = decode(anchors, pred.box_deltas[0].float())
        hw = image_size.to(torch.float32)
        det = select_detections(scores, boxes, [h * w for h, w in shapes], (hw[0], hw[1]), self.params)
        return det.boxes, det.scores, det.labels


def export_metadata(net: PAADetector, ckpt: dict, params: InferenceParams, fixed: tuple[int, int] | None) -> dict:
    """What a runtime needs beside the graph: classes, preprocessing, inputs and outputs."""
    return {"format": FORMAT, "arch": net.config.arch, "categories": ckpt["categories"],
            "input": {"short_side": ckpt["size"], "max_side": ckpt["max_size"], "size_divisor": net.config.layout.size_divisor,
                      "fixed_hw": list(fixed) if fixed else None, "channels": "RGB", "mean": list(MEAN), "std": list(STD),
                      "resize": "bilinear, antialiased", "padding": "zeros at the bottom and right, after normalisation"},
            "inputs": {"image": "float32 (1, 3, H, W)", "image_size": "int64 (2,): resized height, width before padding"},
            "outputs": {"boxes": "float32 (D, 4) xyxy, resized-image pixels", "scores": "float32 (D,)",
                        "labels": "int64 (D,): index into categories"},
            "postprocess": params.__dict__}
