"""`lad plot`: training curves of run folders from their metrics.jsonl.

One subplot per loss term found in the step records (`loss`, `loss_cls`, `loss_box`,
`loss_iou`, then any other `loss_*` such as the soft-label terms) and one for validation
AP (solid) and AP50 (dashed) against the iteration; one colour per run. Co-learning's peer
records (`"network": "peer"`) are drawn in the run's colour with hollow markers.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import LadError
from .draw import new_figure, palette, save_png

BASE_TERMS = ("loss", "loss_cls", "loss_box", "loss_iou")
COLUMNS = 3
WIDTH_IN, ROW_IN = 12.0, 3.2


@dataclass
class Run:
    path: Path
    label: str
    steps: list[dict]  # records with a "loss"
    validations: list[dict]  # records with an "AP"


def read_run(path: Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise LadError(f"{path}: not a run folder")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise LadError(f"{path}: no metrics.jsonl, not a run folder")
    steps, validations = [], []
    for number, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise LadError(f"{metrics}: line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
            raise LadError(f"{metrics}: line {number} has no integer 'iteration'")
        if "loss" in record:
            steps.append(record)
        elif "AP" in record:
            validations.append(record)
    return Run(path, path.name, steps, validations)


def read_runs(paths: list[Path]) -> list[Run]:
    """The runs, labelled by folder name (parent/name where two names collide)."""
    runs = [read_run(p) for p in paths]
    names = [r.label for r in runs]
    for run in runs:
        if names.count(run.label) > 1:
            run.label = f"{run.path.resolve().parent.name}/{run.path.name}"
    return runs


def loss_terms(runs: list[Run]) -> list[str]:
    found = {k for run in runs for record in run.steps for k in record if k == "loss" or k.startswith("loss_")}
    return [t for t in BASE_TERMS if t in found] + sorted(found - set(BASE_TERMS))


def render(runs: list[Run]):
    """The figure and its axes by name: each loss term, and "val"."""
    terms = loss_terms(runs) or list(BASE_TERMS)
    names = terms + ["val"]
    rows = math.ceil(len(names) / COLUMNS)
    fig = new_figure(WIDTH_IN, ROW_IN * rows)
    axes = {name: fig.add_subplot(rows, COLUMNS, i + 1) for i, name in enumerate(names)}
    for r, run in enumerate(runs):
        colour = palette(r)
        for term in terms:
            points = [(s["iteration"], s[term]) for s in run.steps if s.get(term) is not None]
            axes[term].plot([p[0] for p in points], [p[1] for p in points], color=colour, linewidth=1.2,
                            label=run.label)
        for network in sorted({v.get("network", "student") for v in run.validations}, key=lambda n: n != "student"):
            records = [v for v in run.validations if v.get("network", "student") == network]
            suffix = "" if network == "student" else f" ({network})"
            face = colour if network == "student" else "none"
            for key, style in (("AP", "-"), ("AP50", "--")):
                points = [(v["iteration"], v[key]) for v in records if v.get(key) is not None]
                axes["val"].plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=4,
                                 color=colour, markerfacecolor=face, linewidth=1.2, label=f"{run.label}{suffix} {key}")
    for name, ax in axes.items():
        ax.set_title("validation AP (solid), AP50 (dashed)" if name == "val" else name, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    return fig, axes


def run_plot(paths: list[Path], out: Path) -> dict:
    runs = read_runs(paths)
    fig, _ = render(runs)
    save_png(fig, out)
    return {"runs": [{"run": str(r.path), "label": r.label, "steps": len(r.steps), "validations": len(r.validations)}
                     for r in runs], "out": str(out)}
