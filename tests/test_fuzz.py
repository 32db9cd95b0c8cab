"""Property-based fuzzing of the two readers of user files, the COCO annotation reader and the
checkpoint reader: valid files mutated (types, missing keys, ranges, duplicates, encodings,
truncation; other architectures, other tensors). Every case is either read, with nothing
NaN or infinite in what was read, or refused with a one-line LadError (exit code 2 in the
CLI), never another exception. Bounded and derandomized: the same few hundred cases in CI,
in seconds."""
import copy
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from lad_cli.choices import ARCHS
from lad_cli.data.coco import load_split
from lad_cli.engine.checkpoint import model_checkpoint
from lad_cli.errors import LadError
from lad_cli.model.build import load_detector, new_detector

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 300),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(-5, 300), st.text(max_size=6))
FILE_NAMES = st.sampled_from(["../a.png", "/etc/hosts", "a.png", "b.png", "", "a\x00", "C:\\a.png"])
PLAUSIBLE = st.one_of(st.integers(-2, 80), st.floats(-2, 80))  # near the base's ids, sizes and boxes
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                      max_leaves=6)


def refused_in_one_line(read):
    """read() -> its result, or None when it raised a LadError of one line."""
    try:
        result = read()
    except LadError as exc:
        assert str(exc).strip() and "\n" not in str(exc), repr(str(exc))
        event("refused")  # --hypothesis-show-statistics counts the outcomes
        return None
    event("read")
    return result


# --- COCO annotation files --------------------------------------------------------------------

BASE_COCO = {
    "images": [{"id": 0, "file_name": "a.png", "width": 60, "height": 40},
               {"id": 11, "file_name": "b.png", "width": 50, "height": 70}],
    "annotations": [{"id": 1, "image_id": 0, "category_id": 7, "bbox": [5, 5, 20, 10], "iscrowd": 0},
                    {"id": 2, "image_id": 0, "category_id": 3, "bbox": [30, 10, 30.5, 20]},
                    {"id": 3, "image_id": 11, "category_id": 7, "bbox": [0, 0, 50, 30], "iscrowd": 1}],
    "categories": [{"id": 7, "name": "ring"}, {"id": 3, "name": "disc"}],
}
FIELDS = {"images": ("id", "file_name", "width", "height"), "annotations": ("id", "image_id", "category_id", "bbox", "iscrowd"),
          "categories": ("id", "name")}


@st.composite
def coco_bytes(draw) -> bytes:
    doc = copy.deepcopy(BASE_COCO)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["set", "set", "set box value", "delete", "duplicate", "replace section"]))
        section = draw(st.sampled_from(list(FIELDS)))
        if kind == "replace section":
            doc[section] = draw(VALUES)
            continue
        entries = doc.get(section)
        if not isinstance(entries, list) or not entries:
            continue
        i = draw(st.integers(0, len(entries) - 1))
        if kind == "duplicate":
            entries.append(copy.deepcopy(entries[i]))
            continue
        if not isinstance(entries[i], dict):
            continue
        key = draw(st.sampled_from(FIELDS[section]))
        if kind == "delete":
            entries[i].pop(key, None)
        elif kind == "set box value" and isinstance(entries[i].get("bbox"), list) and entries[i]["bbox"]:
            entries[i]["bbox"][draw(st.integers(0, len(entries[i]["bbox"]) - 1))] = draw(st.one_of(PLAUSIBLE, SCALARS))
        else:
            entries[i][key] = draw(st.one_of(PLAUSIBLE, VALUES, FILE_NAMES))
    raw = json.dumps(doc).encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1"])), "replace")
    if draw(st.integers(0, 3)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_images")
    for im in BASE_COCO["images"]:
        Image.new("RGB", (im["width"], im["height"])).save(folder / im["file_name"])
    return folder


@settings(FUZZ, max_examples=300)
@given(raw=coco_bytes())
def test_coco_reader_reads_or_refuses_in_one_line(image_dir, raw):
    ann = image_dir.parent / f"{image_dir.name}.json"
    ann.write_bytes(raw)
    split = refused_in_one_line(lambda: load_split(ann, image_dir))
    if split is None:
        return
    labels = range(len(split.categories))
    for rec in split.images:
        assert isinstance(rec.id, int) and isinstance(rec.width, int) and isinstance(rec.height, int)
        assert rec.width > 0 and rec.height > 0 and rec.path.resolve().parent == image_dir.resolve()
        for boxes in (rec.boxes, rec.crowd):
            assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,) and np.isfinite(boxes).all()
            assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
            assert (boxes[:, [0, 2]] <= rec.width).all() and (boxes[:, [1, 3]] <= rec.height).all()
        assert rec.labels.dtype == np.int64 and len(rec.labels) == len(rec.boxes) and all(int(v) in labels for v in rec.labels)


# --- checkpoints ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_checkpoint():
    torch.manual_seed(0)
    split = SimpleNamespace(categories=[{"id": i, "name": f"c{i}"} for i in (1, 2, 4)], sha256="0" * 64)
    return model_checkpoint(new_detector("resnet18", 3, 16, 1, None), split, SimpleNamespace(size=64, max_size=96, assigner="paa"))


TENSORS = st.sampled_from(["shape", "dtype int", "dtype half", "dtype complex", "nan", "inf", "not a tensor", "delete"])


def changed_tensor(draw, t: torch.Tensor, how: str):
    if how == "shape":
        return torch.zeros(tuple(draw(st.integers(1, 5)) for _ in range(draw(st.integers(0, 4)))))
    if how == "dtype int":
        return t.to(torch.int64)
    if how == "dtype half":
        return t.half()
    if how == "dtype complex":
        return t.to(torch.complex64)
    if how in ("nan", "inf"):
        flat = t.clone().float().reshape(-1)
        flat[draw(st.integers(0, len(flat) - 1))] = float(how)
        return flat.reshape(t.shape)
    return draw(VALUES)


@st.composite
def checkpoint_bytes(draw, base: dict) -> bytes:
    # copies of the containers; a tensor is replaced, never changed in place (a copy of 45 MB of
    # ResNet-18 weights per case would be most of the time)
    model, detector = dict(base["model"]), {**base["detector"], "layout": dict(base["detector"]["layout"])}
    ckpt = {**base, "model": model, "detector": detector}
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["tensor", "tensor", "detector", "layout", "field", "key"]))
        if kind == "tensor":
            key = draw(st.sampled_from(sorted(model)))
            how = draw(TENSORS)
            if how == "delete" or not isinstance(model[key], torch.Tensor):
                model.pop(key)
            else:
                model[key] = changed_tensor(draw, model[key], how)
        elif kind == "detector":  # another architecture, or values of every kind
            key = draw(st.sampled_from(["arch", "num_classes", "width", "head_depth"]))
            detector[key] = draw(st.one_of(st.sampled_from(ARCHS), st.integers(-2, 10**6), VALUES))
        elif kind == "layout":
            detector["layout"][draw(st.sampled_from(["strides", "octave_base_scale", "centre_offset"]))] = draw(VALUES)
        elif kind == "field":
            ckpt[draw(st.sampled_from(["format", "model", "detector", "categories", "size", "max_size"]))] = draw(VALUES)
        else:
            model[draw(st.text(max_size=8))] = torch.zeros(2)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    raw = buffer.getvalue()
    cut = draw(st.sampled_from(["whole", "whole", "whole", "truncated", "byte flipped"]))
    if cut == "truncated":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == "byte flipped":
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
    return raw


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_checkpoint_reader_reads_or_refuses_in_one_line(base_checkpoint, tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzzed.pt"
    path.write_bytes(data.draw(checkpoint_bytes(base_checkpoint)))
    loaded = refused_in_one_line(lambda: load_detector(path))
    if loaded is None:
        return
    model, ckpt = loaded
    tensors = list(model.state_dict().values())
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    assert len(ckpt["categories"]) == model.config.num_classes
