"""A cached student compares the store's provenance with what it knows itself: one test per
refused field, each with a cache that was really made differently (docs/failures.md "Failures and
recovery": "cache of another setup")."""
import json

import pytest

from lad_cli.assign.paa import PAAParams
from lad_cli.assign.registry import ASSIGNERS
from tests.conftest import TINY, invoke


def edited_annotations(synth_data, tmp_path, change, split: str = "train") -> list:
    """--ann/--images of a split of the embedded data with its annotation file changed by `change`."""
    doc = json.loads((synth_data / "annotations" / f"{split}.json").read_text())
    change(doc)
    ann = tmp_path / f"{split}.json"
    ann.write_text(json.dumps(doc))
    return ["--ann", ann, "--images", synth_data / "images" / split]


def rename_a_category(doc):  # the teacher accepts it (same category ids), the names differ
    doc["categories"][0]["name"] += "-renamed"


def nudge_a_box(doc):  # same images and categories, other annotations
    doc["annotations"][0]["bbox"][0] += 0.5


@pytest.mark.parametrize("field", ["categories", "annotations_sha256", "views", "anchor_layout", "assigner"])
def test_cache_made_otherwise_is_refused_naming_the_field(teacher, synth_data, tmp_path, monkeypatch, field):
    data = ["--data", synth_data]
    if field == "categories":
        data = edited_annotations(synth_data, tmp_path, rename_a_category)
    elif field == "annotations_sha256":
        data = edited_annotations(synth_data, tmp_path, nudge_a_box)
    elif field == "assigner":  # a store made with other PAA constants (another lad, another assigner)
        monkeypatch.setattr(ASSIGNERS["paa"], "params", PAAParams(topk=5))
    cache = tmp_path / "cache.zarr"
    result = invoke("assign", "--teacher", teacher, *data, "--cache", cache, "--views", "orig", "--device", "cpu")
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    student = {"views": ["--views", "orig,flip"], "anchor_layout": ["--anchor-scale", "4"]}.get(field, [])
    result = invoke("student-train", "--cache", cache, "--data", synth_data, "--out", tmp_path / "s", *TINY, *student)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {cache}: cache does not match the training setup: {field} differs"], result.stderr
    assert not (tmp_path / "s" / "metrics.jsonl").exists()
