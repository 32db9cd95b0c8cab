"""Shared figure helpers: fixed-size figures (no display, no pyplot state), GT colours, PNG output."""
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..outputs import write_file

DPI = 100
# tab10 without its grey: grey marks the high-cost component and non-positive candidates.
_PALETTE = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]


def palette(index: int) -> tuple[float, float, float]:
    """The index-th colour (of a GT and everything assigned to it, or of a run), RGB in [0, 1]."""
    return tuple(float(c) for c in _PALETTE[index % len(_PALETTE)])


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure of exactly width_in x height_in inches at DPI on an Agg canvas.

    matplotlib.figure.Figure, not pyplot: no global state, never needs a display."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG at its own size and dpi (so axes coordinates map to PNG pixels)."""
    path = Path(path)
    write_file(path, lambda partial: fig.savefig(partial, format="png", dpi=fig.dpi))
    return path
