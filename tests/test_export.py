"""lad export (ONNX through onnxruntime, TorchScript) against the eager model, and lad info."""
import hashlib
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from lad_cli.data.coco import load_split, locate_split
from lad_cli.data.dataset import DetectionDataset
from lad_cli.data.views import View
from lad_cli.engine.inference import detect, detect_with_network
from lad_cli.export.check import exported_detector, match
from lad_cli.model.build import load_detector
from lad_cli.model.postprocess import postprocess
from lad_cli.structures import Detections
from tests.conftest import invoke


@pytest.fixture(scope="module")
def onnx_export(teacher, synth_data, tmp_path_factory):
    """The teacher as a dynamic-size ONNX graph, checked on the val split; (file, summary)."""
    out = tmp_path_factory.mktemp("export") / "teacher.onnx"
    result = invoke("export", "--checkpoint", teacher, "--out", out, "--check", synth_data)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def val_dataset(synth_data):
    """The val images at a larger size than the checkpoint's (64, 96): padded shapes that
    differ from each other and from the one the graphs were traced at (128 x 128)."""
    split = load_split(*locate_split(synth_data, "val"))
    dataset = DetectionDataset(split, [View("orig", 128, 256, False)], 128)
    assert len({dataset.padded_shape(i, 0) for i in range(len(dataset))}) > 1
    return dataset


def test_onnxruntime_gives_the_eager_boxes_and_scores(onnx_export, teacher, synth_data):
    """The graph's inputs as documented, fed to onnxruntime and to the eager network (float32)."""
    path, _ = onnx_export
    net, ckpt = load_detector(teacher)
    net.eval()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dataset = val_dataset(synth_data)
    compared = 0
    for index in range(len(dataset)):
        sample = dataset[(index, 0)]  # resized and normalised
        h, w = sample.image.shape[-2:]
        image = torch.zeros(1, 3, -(-h // 128) * 128, -(-w // 128) * 128)  # zero padding at the bottom/right
        image[0, :, :h, :w] = sample.image
        boxes, scores, labels = session.run(None, {"image": image.numpy(), "image_size": np.array([h, w], np.int64)})
        with torch.no_grad():
            anchors, counts = net.anchors(tuple(image.shape[-2:]), torch.device("cpu"))
            ours = postprocess(net(image), anchors, counts, [(h, w)])[0]
        theirs = Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels))
        pairs = match(ours, theirs)
        assert pairs is not None, index
        # Input pixels; 1e-5 relative: float32 rounding in the network, amplified by the decoding's exp.
        torch.testing.assert_close(theirs.boxes[pairs], ours.boxes, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(theirs.scores[pairs], ours.scores, atol=1e-4, rtol=0)
        compared += len(pairs)
    assert compared > 100  # several images, many detections each
    model = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["lad"])
    assert meta["categories"] == ckpt["categories"] and meta["input"]["size_divisor"] == 128
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs == {"image": [1, 3, "height", "width"], "image_size": [2]}


def test_the_onnx_graph_scores_the_val_split_as_the_eager_model(onnx_export, teacher, synth_data):
    _, summary = onnx_export
    check = summary["check"]
    assert check["images"] == 6 and check["images_with_other_detections"] == 0
    assert check["max_box_diff"] < 1e-3 and check["max_score_diff"] < 1e-4
    assert abs(check["exported"]["AP"] - check["eager"]["AP"]) <= 0.002
    # The eager side is `lad eval` in float32 one image at a time.
    evaluated = invoke("eval", "--checkpoint", teacher, "--data", synth_data, "--amp", "off", "--batch", "1",
                       "--device", "cpu", "--json", "-")
    assert json.loads(evaluated.stdout)["AP"] == check["eager"]["AP"]


def test_torchscript_export_takes_any_size(teacher, synth_data, tmp_path):
    result = invoke("export", "--checkpoint", teacher, "--out", tmp_path / "t.pt", "--format", "torchscript")
    assert result.exit_code == 0, result.output
    net, _ = load_detector(teacher)
    dataset = val_dataset(synth_data)
    run = exported_detector(tmp_path / "t.pt", "torchscript")
    eager = dict(detect_with_network(net, dataset, 1, torch.device("cpu")))
    for index, det in detect(dataset, run, 1, torch.device("cpu")):
        torch.testing.assert_close(det.boxes, eager[index].boxes)
        torch.testing.assert_close(det.scores, eager[index].scores)
        assert torch.equal(det.labels, eager[index].labels)


def test_fixed_size_onnx_and_refusals(teacher, tmp_path):
    result = invoke("export", "--checkpoint", teacher, "--out", tmp_path / "f.onnx", "--size", "128", "256")
    assert result.exit_code == 0, result.output
    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 128, 256]
    cases = [
        (["--out", tmp_path / "f.onnx"], "an exported model is already there; pass --overwrite"),
        (["--out", tmp_path / "g.onnx", "--size", "100", "128"], "multiples of 128"),
        (["--out", tmp_path / "g.onnx", "--size", "128", "128", "--dynamic"], "--size and --dynamic exclude each other"),
        (["--out", tmp_path / "g.tflite", "--format", "tflite"], "unknown --format 'tflite'"),
    ]
    for args, message in cases:
        result = invoke("export", "--checkpoint", teacher, *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "g.onnx").exists() and not list(tmp_path.glob(".*"))  # no temp, lock or staging file
    again = invoke("export", "--checkpoint", teacher, "--out", tmp_path / "f.onnx", "--overwrite")  # now any size
    assert again.exit_code == 0 and json.loads(again.stdout)["inputs"]["image"] == [1, 3, "H", "W"], again.output
    assert onnx.load(str(tmp_path / "f.onnx")).graph.input[0].type.tensor_type.shape.dim[2].dim_param == "height"
    bad_check = invoke("export", "--checkpoint", teacher, "--out", tmp_path / "h.onnx", "--check", tmp_path / "nowhere")
    assert bad_check.exit_code == 2 and "data directory not found" in bad_check.stderr and not (tmp_path / "h.onnx").exists()


def test_info_counts_parameters_and_flops(teacher):
    result = invoke("info", teacher, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    net, ckpt = load_detector(teacher)
    state = ckpt["model"]
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert info["parameters"]["total"] == params
    assert info["parameters"]["backbone"] + info["parameters"]["fpn"] + info["parameters"]["head"] == params
    # FLOPs by hand: 2 x output elements x (input channels / groups) x kernel area, per convolution.
    flops = []
    hooks = [m.register_forward_hook(lambda m, i, o: flops.append(2 * o.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    h, w = info["flops"]["input_hw"]
    assert (h, w) == (128, 128)  # 64 x 96 (the training size) padded to multiples of 128
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, h, w))
    for hook in hooks:
        hook.remove()
    assert info["flops"]["total"] == sum(flops)
    assert info["arch"] == "resnet18" and info["num_classes"] == 6 and info["input"]["short_side"] == 64
    assert info["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert info["training"]["assignment"] == {"source": "own"} and info["training"]["epochs"] == 2
    text = invoke("info", teacher)
    assert text.exit_code == 0 and "trained on: own assignments" in text.stdout and "FLOPs" in text.stdout
