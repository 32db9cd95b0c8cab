"""lad show-assign and lad plot: the PNGs, what is drawn where, the JSON summaries, the errors;
the per-GT mixture fits they draw against paa_assign and sklearn; predict's drawings (scaled up,
labels placed apart, a legend)."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.mixture import GaussianMixture

from lad_cli.assign.inspect import gt_fits
from lad_cli.assign.paa import paa_assign
from lad_cli.viz import detections, plot, show_assign
from lad_cli.viz.draw import DPI, palette, save_png
from tests.conftest import TINY, invoke
from tests.test_assign import random_batch


@pytest.fixture(scope="module")
def run(synth_data, tmp_path_factory):
    """A tiny teacher run folder (1 epoch, validated once)."""
    out = tmp_path_factory.mktemp("pictures") / "teacher"
    result = invoke("teacher-train", "--data", synth_data, "--out", out, "--epochs", "1", *TINY)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def busiest(synth_data):
    """(image id, its non-crowd annotations, the image record) of the train image with most GTs."""
    doc = json.loads((synth_data / "annotations" / "train.json").read_text())
    anns = [a for a in doc["annotations"] if not a.get("iscrowd")]
    image = max(doc["images"], key=lambda im: sum(a["image_id"] == im["id"] for a in anns))
    return image["id"], [a for a in anns if a["image_id"] == image["id"]], image


@pytest.mark.parametrize("seed", [0, 1, 5])  # seeds whose image has GTs
def test_gt_fits_positives_are_paa_assign_positives(seed):
    anchors, counts, cls, deltas, targets = random_batch(seed, n=1, max_gts=8)
    matched = paa_assign(anchors, counts, cls, deltas, targets)[0]
    fits = gt_fits(anchors, counts, cls[0], deltas[0], targets)
    assert len(fits) == int(targets.valid.sum()) > 0
    for g, fit in enumerate(fits):
        assert torch.equal(fit.costs, fit.costs.sort().values)
        assert set(fit.anchor_idx[fit.positive].tolist()) == set(torch.nonzero(matched == g).flatten().tolist())
        if fit.positive.any():
            assert fit.cut == float(fit.costs[fit.positive].max())
        if fit.fitted:  # the drawn mixture is sklearn's fit of the drawn costs
            x = fit.costs.numpy().reshape(-1, 1)
            gmm = GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                                  precisions_init=np.ones((2, 1)), covariance_type="diag").fit(x)
            np.testing.assert_allclose(fit.means.numpy(), gmm.means_[:, 0], rtol=1e-3)
            np.testing.assert_allclose(fit.variances.numpy(), gmm.covariances_[:, 0], rtol=1e-3)
            np.testing.assert_allclose(fit.weights.numpy(), gmm.weights_, rtol=1e-3)


def test_show_assign_cli_writes_png_and_summary(run, synth_data, busiest, tmp_path):
    image_id, anns, image = busiest
    out = tmp_path / "assign.png"
    ckpt = run / "last.pt"
    result = invoke("show-assign", "--teacher", ckpt, "--student", ckpt, "--data", synth_data, "--image", image_id,
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    width, height = show_assign.figure_inches(2, len(anns))
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (round(width * DPI), round(height * DPI))
    assert summary["image_id"] == image_id and summary["out"] == str(out) and summary["view"] == "orig"
    assert [g["category_id"] for g in summary["gts"]] == [a["category_id"] for a in anns]
    # Boxes in view pixels: the annotation scaled like the image (shorter side 64, longer at most 96).
    scale = min(64 / min(image["width"], image["height"]), 96 / max(image["width"], image["height"]))
    x, y, w, h = anns[0]["bbox"]
    np.testing.assert_allclose(summary["gts"][0]["box"], np.array([x, y, x + w, y + h]) * scale, atol=0.5)
    # The same checkpoint as student: its own assignment is the teacher's.
    assert summary["positives"]["teacher"] == summary["positives"]["student"]
    assert len(summary["positives"]["teacher"]) == len(anns) and sum(summary["positives"]["teacher"]) > 0
    assert summary["gts_plotted"] == min(len(anns), show_assign.MAX_GTS)


def test_show_assign_draws_each_gt_box_in_its_colour(run, synth_data, busiest, tmp_path):
    image_id = busiest[0]
    scene = show_assign.collect(run / "last.pt", None, synth_data, "train", None, None, image_id, "orig", "cpu")
    fig, (ax,) = show_assign.render(scene)
    pixels = np.asarray(Image.open(save_png(fig, tmp_path / "scene.png")).convert("RGB")).astype(int)
    png_h = pixels.shape[0]
    for g, (x1, y1, x2, y2) in enumerate(scene.boxes):
        colour = np.round(np.array(palette(g)) * 255)
        # Points along the bottom and right edges, away from the corners (the label sits on the top edge).
        t = np.linspace(0.2, 0.8, 7)
        edge = np.concatenate([np.stack([x1 + t * (x2 - x1), np.full_like(t, y2)], 1),
                               np.stack([np.full_like(t, x2), y1 + t * (y2 - y1)], 1)])
        display = ax.transData.transform(edge)
        cols, rows = np.round(display[:, 0]).astype(int), np.round(png_h - display[:, 1]).astype(int)
        # Within 2 px of each point (line snapping and antialiasing move the stroke's core by ~1 px).
        near = [np.abs(pixels[r - 2:r + 3, c - 2:c + 3] - colour).max(-1).min() for r, c in zip(rows, cols)]
        assert (np.array(near) <= 12).mean() >= 0.7, (g, near, colour)
        # Where the box is drawn, the image underneath is another colour: the box made the difference.
        under = scene.image[np.clip(edge[:, 1].astype(int), 0, scene.image.shape[0] - 1),
                            np.clip(edge[:, 0].astype(int), 0, scene.image.shape[1] - 1)]
        assert (np.abs(under.astype(int) - colour).max(1) > 12).mean() >= 0.7


def test_show_assign_errors(run, synth_data, busiest, tmp_path):
    ckpt = run / "last.pt"
    base = ["show-assign", "--teacher", ckpt, "--data", synth_data, "--out", tmp_path / "x.png", "--device", "cpu"]
    result = invoke(*base, "--image", 987654)
    assert result.exit_code == 2 and result.stderr.strip().endswith("train.json: no image id 987654")
    assert len(result.stderr.strip().splitlines()) == 1
    result = invoke(*base, "--image", busiest[0], "--view", "orig,flip")
    assert result.exit_code == 2 and "give one view" in result.stderr
    other = torch.load(ckpt, weights_only=False)
    other["categories"] = [{"id": 100 + c["id"], "name": c["name"]} for c in other["categories"]]
    torch.save(other, tmp_path / "other.pt")
    result = invoke(*base, "--image", busiest[0], "--student", tmp_path / "other.pt")
    assert result.exit_code == 2 and "other.pt: student was trained on other categories than" in result.stderr
    assert not (tmp_path / "x.png").exists()


def fake_run(folder, scale, peer=False):
    """A run folder whose metrics.jsonl holds 5 steps and 2 validations (and a peer's)."""
    folder.mkdir(parents=True)
    lines = [{"iteration": i, "epoch": 1, "lr": 0.01, "loss": 3 * scale / i, "loss_cls": scale / i,
              "loss_box": scale / i, "loss_iou": scale / i} for i in range(1, 6)]
    for it, ap in ((3, 0.1), (5, 0.2)):
        lines.append({"epoch": it // 2, "iteration": it, "AP": ap * scale, "AP50": 2 * ap * scale})
        if peer:
            lines.append({"epoch": it // 2, "iteration": it, "network": "peer", "AP": ap, "AP50": 2 * ap})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_plot_one_line_per_run_per_term(run, tmp_path):
    other = fake_run(tmp_path / "colearn", 2.0, peer=True)
    runs = plot.read_runs([run, other])
    fig, axes = plot.render(runs)
    assert list(axes) == ["loss", "loss_cls", "loss_box", "loss_iou", "val"]
    for term in plot.BASE_TERMS:
        lines = axes[term].get_lines()
        assert [line.get_label() for line in lines] == ["teacher", "colearn"]
        assert len(lines[1].get_xdata()) == 5 and lines[1].get_ydata()[0] == (6.0 if term == "loss" else 2.0)
    val = [line.get_label() for line in axes["val"].get_lines()]
    assert val == ["teacher AP", "teacher AP50", "colearn AP", "colearn AP50", "colearn (peer) AP", "colearn (peer) AP50"]
    # One run fewer: a different picture.
    one = np.asarray(Image.open(save_png(plot.render(runs[:1])[0], tmp_path / "one.png")))
    two = np.asarray(Image.open(save_png(fig, tmp_path / "two.png")))
    assert one.shape == two.shape and (one != two).any()


def test_plot_cli(run, tmp_path):
    twin = tmp_path / "a" / "teacher"
    shutil.copytree(run, twin)
    out = tmp_path / "curves.png"
    result = invoke("plot", run, twin, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    steps = sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    # Two folders named alike are told apart by their parent folder.
    assert [r["label"] for r in summary["runs"]] == [f"{run.parent.name}/teacher", "a/teacher"]
    assert [r["steps"] for r in summary["runs"]] == [steps, steps] and summary["runs"][0]["validations"] == 1
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (round(plot.WIDTH_IN * DPI), round(2 * plot.ROW_IN * DPI))


def test_plot_errors(run, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("plot", run, tmp_path / "empty", "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'empty'}: no metrics.jsonl, not a run folder"
    result = invoke("plot", tmp_path / "missing", "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'missing'}: not a run folder"
    broken = fake_run(tmp_path / "broken", 1.0)
    with open(broken / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 6, "loss": \n')
    result = invoke("plot", broken, "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "metrics.jsonl: line 8 is not JSON" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_labels_hide_no_earlier_label_and_no_box_edge_when_there_is_room():
    # Three boxes sharing a top-left corner (a detection and two near-duplicates): one label
    # place each, none over another label or any box's outline.
    boxes = [(100, 100, 300, 300), (100, 100, 260, 280), (104, 104, 300, 220)]
    sizes = [(60, 18)] * 3
    placed = detections.place_labels(boxes, sizes, (512, 512))
    outlines = [s for box in boxes for s in detections._edges(box, detections.LINE_PX)]
    for i, label in enumerate(placed):
        assert label[2] - label[0] == 60 and label[3] - label[1] == 18
        assert 0 <= label[0] and 0 <= label[1] and label[2] <= 512 and label[3] <= 512
        assert all(detections._overlap(label, other) == 0 for other in placed[:i])
        assert all(detections._overlap(label, strip) == 0 for strip in outlines)
    assert placed[0] == (100, 82, 160, 100)  # the first goes above its box
    # A box at the top edge: no room above, the label goes inside its top.
    assert detections.place_labels([(10, 0, 200, 100)], [(50, 16)], (512, 512)) == \
        [(10 + detections.LINE_PX, detections.LINE_PX, 60 + detections.LINE_PX, 16 + detections.LINE_PX)]


def grey_picture(tmp_path, side):
    path = tmp_path / f"grey{side}.png"
    Image.new("RGB", (side, side), (128, 128, 128)).save(path)
    return path


def test_small_images_are_scaled_up_and_text_keeps_its_size_in_pixels(tmp_path):
    categories = [{"id": 3, "name": "disc"}, {"id": 7, "name": "star"}]
    record = {"category_id": 7, "score": 0.87}
    small = detections.draw_detections(grey_picture(tmp_path, 64), [{**record, "bbox": [8, 16, 16, 8]}], categories)
    readable = detections.draw_detections(grey_picture(tmp_path, 512), [{**record, "bbox": [64, 128, 128, 64]}], categories)
    large = detections.draw_detections(grey_picture(tmp_path, 1024), [{**record, "bbox": [128, 256, 256, 128]}], categories)
    # 64 px is drawn at 512: the very picture of a 512 px image with the box 8 times larger.
    assert small.size[0] == 512 and np.array_equal(np.asarray(small), np.asarray(readable))
    # A 1024 px image is not scaled; its label has the same pixels as at 512, above its box.
    label = np.asarray(readable)[100:128, 64:140]
    assert np.array_equal(np.asarray(large)[228:256, 128:204], label)
    star = np.round(np.array(palette(1)) * 255)
    rows, cols = np.nonzero((np.abs(label - star).max(-1) == 0))  # the label, filled in the class colour
    assert cols.min() == 0 and rows.max() == 27 and 12 <= rows.max() - rows.min() + 1 <= 24  # above the box, text-high
    # Below the image, the legend: a swatch of every class in its colour.
    band = np.asarray(small)[512:]
    for i in range(2):
        assert (np.abs(band - np.round(np.array(palette(i)) * 255)).max(-1) == 0).sum() >= 100
