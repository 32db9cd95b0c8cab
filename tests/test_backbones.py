"""MobileNet backbones: torchvision's features at strides 8/16/32, ImageNet weights from torch's
cache or a file, and what pretraining buys a student on a short schedule."""
import json
import shutil

import pytest
import torch
import torchvision

from lad_cli.model.backbone import MOBILENET_TAPS, MobileNetC3C5, load_backbone_weights
from lad_cli.model.build import load_checkpoint, new_detector
from tests.conftest import TINY, invoke, mobilenet_v2_imagenet_file


@pytest.mark.parametrize("arch", sorted(MOBILENET_TAPS))
def test_mobilenet_taps_are_torchvisions_features_at_strides_8_16_32(arch, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    backbone = MobileNetC3C5(arch)
    load_backbone_weights(backbone, arch, str(tmp_path / "w.pth"))
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        ours = backbone.eval()(x)
        expected, h = [], x
        for i, block in enumerate(reference.features):
            h = block(h)
            if i in MOBILENET_TAPS[arch][0]:
                expected.append(h)
    assert [tuple(f.shape[-2:]) for f in ours] == [(16, 24), (8, 12), (4, 6)]
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)
    assert list(backbone.out_channels) == [f.shape[1] for f in expected]
    with pytest.raises(Exception, match=f"not a {arch} state dict"):
        load_backbone_weights(backbone, arch, str(_resnet_file(tmp_path)))


def _resnet_file(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    return tmp_path / "r18.pth"


def test_imagenet_weights_come_from_torchs_cache_offline(tmp_path, monkeypatch):
    """The README's offline recipe: the file in $TORCH_HOME/hub/checkpoints/, then --weights imagenet."""
    source = mobilenet_v2_imagenet_file()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(source, tmp_path / "hub" / "checkpoints" / source.name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(source, weights_only=True))
    net = new_detector("mobilenet_v2", 6, 16, 1, "imagenet")
    torch.testing.assert_close(net.backbone.features[17].conv[0][0].weight, reference.features[17].conv[0][0].weight)
    # Pretrained: the stride <= 4 blocks and every BatchNorm are fixed, also in train mode.
    net.train()
    stem = [p for block in net.backbone.features[:4] for p in block.parameters()]
    assert stem and not any(p.requires_grad for p in stem)
    assert net.backbone.features[4].conv[0][0].weight.requires_grad
    norms = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training or m.weight.requires_grad for m in norms)


def test_a_pretrained_backbone_lifts_a_student_on_a_short_schedule(tmp_path):
    """MobileNetV2 from ImageNet vs from scratch: same data, seed and 24 iterations."""
    from lad_cli.data.synth import write_synth

    write_synth(tmp_path / "data", 16, 8, seed=5)
    common = ["--data", tmp_path / "data", "--arch", "mobilenet_v2", "--epochs", "6", "--batch", "4", "--lr", "0.005",
              "--warmup", "4", "--size", "160", "--max-size", "256", "--width", "32", "--head-depth", "1",
              "--anchor-scale", "4", "--amp", "off", "--device", "cpu", "--log-every", "24"]
    ap = {}
    for name, extra in (("scratch", []), ("imagenet", ["--weights", mobilenet_v2_imagenet_file()])):
        result = invoke("teacher-train", "--out", tmp_path / name, *common, *extra)
        assert result.exit_code == 0, result.output
        ap[name] = json.loads(result.stdout)["val"]
    assert ap["imagenet"]["AP50"] > 0.02 and ap["imagenet"]["AP50"] > 4 * ap["scratch"]["AP50"], ap
    assert ap["imagenet"]["AP"] > ap["scratch"]["AP"], ap
    assert load_checkpoint(tmp_path / "imagenet" / "last.pt")["training"]["weights"].endswith("mobilenet_v2-b0353104.pth")


def test_mobilenets_as_teacher_cache_student_and_peer(synth_data, tmp_path):
    tiny = [a if a != "resnet18" else "mobilenet_v2" for a in TINY]
    teacher = invoke("teacher-train", "--data", synth_data, "--out", tmp_path / "t", "--epochs", "1", "--val-split", "", *tiny)
    assert teacher.exit_code == 0, teacher.output
    cache = invoke("assign", "--teacher", tmp_path / "t" / "last.pt", "--data", synth_data, "--cache", tmp_path / "c.zarr",
                   "--device", "cpu")
    assert cache.exit_code == 0, cache.output
    student = invoke("student-train", "--cache", tmp_path / "c.zarr", "--colearn", "--data", synth_data, "--out", tmp_path / "s")
    assert student.exit_code == 2  # one source at a time; now each on its own:
    for out, source in (("s", ["--cache", tmp_path / "c.zarr"]), ("co", ["--colearn", "--peer-arch", "mobilenet_v2"])):
        args = [a if a != "mobilenet_v2" else "mobilenet_v3_large" for a in tiny]
        result = invoke("student-train", *source, "--data", synth_data, "--out", tmp_path / out, "--epochs", "1",
                        "--val-split", "", *args)
        assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "s" / "last.pt")["detector"]["arch"] == "mobilenet_v3_large"
    assert load_checkpoint(tmp_path / "co" / "peer_last.pt")["detector"]["arch"] == "mobilenet_v2"
