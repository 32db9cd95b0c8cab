"""`lad show-assign`: one image as the network sees it, its GT boxes, the positive anchors of
the teacher's PAA assignment (and of a student's own), and each GT's mixture fit.

Everything is drawn in view pixels: the resized (possibly flipped) image on its padded
canvas, exactly the tensor the teacher assigns on; padding shows as the normalisation
mean colour.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.patches import Rectangle

from ..assign.inspect import GTFit, gt_fits
from ..assign.paa import PAAParams
from ..assign.registry import ASSIGNERS
from ..data.coco import CocoSplit, load_split, locate_split
from ..data.dataset import DetectionDataset, collate
from ..data.views import MEAN, STD, View, parse_views
from ..distill.teacher import Teacher
from ..errors import LadError
from ..model.anchors import anchor_levels
from ..runtime import resolve_device, use_bf16
from ..structures import IGNORE
from .draw import new_figure, palette, save_png

MAX_GTS = 8  # mixture plots per network; further GTs are drawn on the image only
COLUMNS = 4
WIDTH_IN, PANEL_IN, FIT_ROW_IN = 12.0, 5.0, 2.2


@dataclass
class Panel:
    """One network's assignment of the scene: matched (A,) int64 and its per-GT fits."""

    name: str
    path: Path
    matched: torch.Tensor
    fits: list[GTFit]


@dataclass
class Scene:
    """image (H, W, 3) uint8: the padded input, de-normalised; boxes (G, 4) and crowd (K, 4)
    regions in view pixels; anchors (A, 4) and levels (A,) (0 = P3) of the padded input."""

    image_id: int
    view: View
    image: np.ndarray
    image_hw: tuple[int, int]
    boxes: np.ndarray
    crowd: np.ndarray
    category_ids: list[int]
    category_names: list[str]
    anchors: np.ndarray
    levels: np.ndarray
    panels: list[Panel]


def figure_inches(num_panels: int, num_gts: int) -> tuple[float, float]:
    """Width, height: the image row, then ceil(min(G, MAX_GTS) / COLUMNS) rows of fits per panel."""
    rows = math.ceil(min(num_gts, MAX_GTS) / COLUMNS)
    return WIDTH_IN, PANEL_IN + FIT_ROW_IN * rows * num_panels


def _find_image(split: CocoSplit, image_id: int) -> int:
    for index, rec in enumerate(split.images):
        if rec.id == image_id:
            return index
    raise LadError(f"{split.ann_file}: no image id {image_id}")


def collect(teacher_path: Path, student_path: Path | None, data, split_name: str, ann, images, image_id: int,
            view_name: str, device_name: str, amp: str = "auto", params: PAAParams = PAAParams(),
            strict_boxes: bool = False) -> Scene:
    """Run the teacher (and the student) on one (image, view) and gather what the figure shows."""
    device = resolve_device(device_name)
    bf16 = use_bf16(device, amp)
    teacher = Teacher(teacher_path, device, bf16)
    split = load_split(*locate_split(data, split_name, ann, images), strict_boxes=strict_boxes)
    teacher.check_data(split)
    networks = [("teacher", teacher)]
    if student_path is not None:
        # A frozen, eval-mode network is what the student's own assignment is computed from here.
        student = Teacher(student_path, device, bf16)
        student.check_data(split, "student")
        if student.model.config.layout != teacher.model.config.layout:
            raise LadError(f"{student_path}: student anchor layout {student.model.config.layout} differs from the teacher's")
        networks.append(("student", student))
    index = _find_image(split, image_id)
    views = parse_views(view_name, teacher.checkpoint["size"], teacher.checkpoint["max_size"])
    if len(views) != 1:
        raise LadError(f"--view {view_name!r}: give one view, e.g. orig, flip or orig@640")
    layout = teacher.model.config.layout
    batch = collate([DetectionDataset(split, views, layout.size_divisor)[(index, 0)]], layout.size_divisor).to(device)
    anchors, counts = teacher.model.anchors(batch.padded_hw, device)
    panels = []
    for name, net in networks:
        matched, pred = net.assign(batch, ASSIGNERS["paa"])  # the mixture fits below are PAA's, whatever the teacher's assigner
        fits = gt_fits(anchors, counts, pred.cls_logits[0], pred.box_deltas[0], batch.targets, params)
        panels.append(Panel(name, net.path, matched[0].cpu(), fits))
    canvas = batch.images[0].cpu() * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    rec = split.images[index]
    num_gts = int(batch.targets.valid[0].sum())
    num_crowd = int(batch.targets.crowd_valid[0].sum())
    return Scene(
        image_id=image_id, view=views[0],
        image=canvas.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy(),
        image_hw=batch.image_hw[0], boxes=batch.targets.boxes[0, :num_gts].cpu().numpy(),
        crowd=batch.targets.crowd_boxes[0, :num_crowd].cpu().numpy(),
        category_ids=[split.category_id(int(lab)) for lab in rec.labels],
        category_names=[split.categories[int(lab)]["name"] for lab in rec.labels],
        anchors=anchors.cpu().numpy(),
        levels=anchor_levels(counts).numpy(),
        panels=panels,
    )


def render(scene: Scene):
    """The figure and its image axes (one per panel, in view-pixel data coordinates)."""
    num_gts = len(scene.boxes)
    fig = new_figure(*figure_inches(len(scene.panels), num_gts))
    plotted = min(num_gts, MAX_GTS)
    rows = math.ceil(plotted / COLUMNS)
    grid = fig.add_gridspec(1 + rows * len(scene.panels), COLUMNS,
                            height_ratios=[PANEL_IN] + [FIT_ROW_IN] * rows * len(scene.panels))
    span = COLUMNS // len(scene.panels)
    image_axes = []
    for p, panel in enumerate(scene.panels):
        ax = fig.add_subplot(grid[0, p * span:(p + 1) * span])
        _draw_panel(ax, scene, panel)
        image_axes.append(ax)
        for g in range(plotted):
            fit_ax = fig.add_subplot(grid[1 + p * rows + g // COLUMNS, g % COLUMNS])
            _draw_fit(fit_ax, panel.fits[g], palette(g), f"{panel.name} GT {g} ({scene.category_names[g]})")
    if num_gts > MAX_GTS:
        fig.suptitle(f"mixture fits of the first {MAX_GTS} of {num_gts} GTs", fontsize=9)
    return fig, image_axes


def _draw_panel(ax, scene: Scene, panel: Panel) -> None:
    h, w = scene.image.shape[:2]
    ax.imshow(scene.image, extent=(0, w, h, 0), interpolation="nearest")
    centres = (scene.anchors[:, :2] + scene.anchors[:, 2:]) / 2
    matched = panel.matched.numpy()
    for g, box in enumerate(scene.boxes):
        colour = palette(g)
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor=colour,
                               linewidth=2.5, zorder=2))
        ax.text(box[0], box[1], f"{g} {scene.category_names[g]}", color="white", fontsize=7, va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1}, zorder=5)
        mine = matched == g
        # Dot area grows with the pyramid level: a P7 positive covers far more image than a P3 one.
        ax.scatter(centres[mine, 0], centres[mine, 1], s=10 * (1 + scene.levels[mine]) ** 1.5, color=colour,
                   edgecolors="black", linewidths=0.6, zorder=4)
    for box in scene.crowd:
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor="black",
                               linestyle="--", linewidth=1.2, zorder=2))
    ignored = matched == IGNORE
    if ignored.any():
        ax.scatter(centres[ignored, 0], centres[ignored, 1], s=12, marker="x", color="black", linewidths=0.8,
                   zorder=3)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.tick_params(labelsize=7)
    title = f"{panel.name} ({panel.path.parent.name}/{panel.path.name}): {int((matched >= 0).sum())} positives"
    if ignored.any():
        title += f", {int(ignored.sum())} ignored (x; crowd regions dashed)"
    ax.set_title(f"{title}\nimage {scene.image_id}, view {scene.view.name}, {h}x{w} input", fontsize=9)


def _draw_fit(ax, fit: GTFit, colour, title: str) -> None:
    costs = fit.costs.double().numpy()
    positive = fit.positive.numpy()
    ax.tick_params(labelsize=6)
    ax.set_title(f"{title}: {int(positive.sum())} of {len(costs)}", fontsize=8)
    if not fit.fitted:
        ax.text(0.5, 0.5, "no candidate" if len(costs) == 0 else "1 candidate: no mixture, no positive",
                transform=ax.transAxes, ha="center", va="center", fontsize=7)
        ax.scatter(costs, np.zeros_like(costs), marker="|", color="0.3")
        return
    counts, _, _ = ax.hist(costs, bins=min(15, max(4, len(costs) // 3)), density=True, color="0.85")
    for chosen, rug in ((~positive, "0.35"), (positive, colour)):
        ax.scatter(costs[chosen], np.zeros(int(chosen.sum())), marker="|", s=200, linewidths=1.5, color=rug, zorder=3)
    pad = max(0.1 * (costs[-1] - costs[0]), 0.05)
    x = np.linspace(costs[0] - pad, costs[-1] + pad, 300)
    peak = 0.0
    for k, (style, name) in enumerate(((colour, "low"), ("0.3", "high"))):
        weight, mean, var = (float(t[k]) for t in (fit.weights, fit.means, fit.variances))
        density = weight * np.exp(-0.5 * (x - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)
        peak = max(peak, float(density.max()))
        ax.plot(x, density, color=style, linewidth=1.2,
                label=f"{name}: w {weight:.2f}, mean {mean:.2f}, var {var:.2g}")
    if fit.cut is not None:
        ax.axvline(fit.cut, color=colour, linestyle=":", linewidth=1.5, label=f"cut {fit.cut:.2f}")
    # A collapsed component (variance at reg_covar) is a spike: keep the histogram readable.
    ax.set_ylim(0, 1.15 * min(max(peak, float(counts.max())), 3 * float(counts.max())))
    ax.legend(fontsize=6, loc="upper right", frameon=False)


def summary(scene: Scene, out: Path) -> dict:
    return {
        "image_id": scene.image_id, "view": scene.view.name,
        "input_hw": list(scene.image.shape[:2]), "image_hw": list(scene.image_hw),
        "gts": [{"gt": g, "category_id": cid, "category": name, "box": [round(float(v), 2) for v in box]}
                for g, (cid, name, box) in enumerate(zip(scene.category_ids, scene.category_names, scene.boxes))],
        "positives": {p.name: [int((p.matched == g).sum()) for g in range(len(scene.boxes))] for p in scene.panels},
        "ignored": {p.name: int((p.matched == IGNORE).sum()) for p in scene.panels},
        "gts_plotted": min(len(scene.boxes), MAX_GTS),
        "out": str(out),
    }


def run_show_assign(*, teacher: Path, student: Path | None, data, split: str, ann, images, image_id: int, view: str,
                    out: Path, device: str, amp: str = "auto", strict_boxes: bool = False) -> dict:
    scene = collect(teacher, student, data, split, ann, images, image_id, view, device, amp, strict_boxes=strict_boxes)
    fig, _ = render(scene)
    save_png(fig, out)
    return summary(scene, out)
