"""Backbone weights from a local torchvision file, and the offline answer for 'imagenet'."""
import urllib.error

import pytest
import torch
import torchvision

from lad_cli.errors import LadError
from lad_cli.model.backbone import ResNetC3C5, load_backbone_weights


def test_local_torchvision_state_dict_is_loaded(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    backbone = ResNetC3C5("resnet18")
    load_backbone_weights(backbone, "resnet18", str(tmp_path / "r18.pth"))
    torch.testing.assert_close(backbone.stem[0].weight, reference.conv1.weight)
    torch.testing.assert_close(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(LadError, match="not a resnet50 state dict"):
        load_backbone_weights(ResNetC3C5("resnet50"), "resnet50", str(tmp_path / "r18.pth"))


def test_imagenet_offline_with_empty_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(LadError) as info:
        load_backbone_weights(ResNetC3C5("resnet18"), "resnet18", "imagenet")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
