"""Figures of Hessian spectra (matplotlib's object API with the Agg canvas: no display needed,
and the global pyplot backend of the caller is left alone)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from ltsam.hessian.density import density_grid

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn (its import slowed every command's start)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FONT_SIZE = 14
# Added before taking the log, as the reference does, so that empty parts of the grid show.
DENSITY_FLOOR = 1e-7

Spectrum = tuple[Tensor, Tensor]  # (nodes, weights), each [runs, m]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", dpi=100)
    return path


def draw_esd(ax: Axes, nodes: Tensor, weights: Tensor, label: str | None = None,
             font_size: int = FONT_SIZE) -> None:
    """Semilog-y of ``density + 1e-7`` against the eigenvalue, x from min-1 to max+1 Ritz value."""
    grid, density = density_grid(nodes, weights)
    ax.semilogy(grid.numpy(), (density + DENSITY_FLOOR).numpy(), label=label)
    ax.set_xlim(float(nodes.min()) - 1, float(nodes.max()) + 1)
    ax.set_xlabel("Eigenvalue", fontsize=font_size)
    ax.set_ylabel("Density (Log Scale)", fontsize=font_size)


def plot_esd(nodes: Tensor, weights: Tensor, path: str | Path, title: str | None = None) -> Path:
    """One spectral density figure (the reference's ``get_esd_plot``, one class per figure)."""
    fig = _figure(6, 4.5)
    ax = fig.add_subplot()
    draw_esd(ax, nodes, weights)
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 2)
    return _save(fig, path)


def plot_esd_grid(spectra: Sequence[tuple[str, Tensor, Tensor]], path: str | Path,
                  columns: int = 5) -> Path:
    """All spectra in one figure, one panel each, in the given (head-to-tail) order."""
    rows = max(1, math.ceil(len(spectra) / columns))
    cols = min(columns, max(1, len(spectra)))
    fig = _figure(3.2 * cols, 2.6 * rows)
    for i, (title, nodes, weights) in enumerate(spectra):
        ax = fig.add_subplot(rows, cols, i + 1)
        draw_esd(ax, nodes, weights, font_size=9)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_eigen_by_class(classes: Sequence[str], sizes: Sequence[float],
                        series: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """One panel per quantity (e.g. dominant, largest and smallest eigenvalue, trace) against class
    size (log x)."""
    fig = _figure(4.2 * len(series), 3.6)
    for i, (name, values) in enumerate(series.items()):
        ax = fig.add_subplot(1, len(series), i + 1)
        ax.plot(sizes, values, "o-")
        for label, x, y in zip(classes, sizes, values, strict=True):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("Class size", fontsize=12)
        ax.set_title(name, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_compare(rows: Sequence[tuple[str, Spectrum, Spectrum]], labels: tuple[str, str],
                 path: str | Path) -> Path:
    """Two runs side by side: one row per class, run A on the left and run B on the right."""
    fig = _figure(9, 2.8 * max(1, len(rows)))
    for r, (title, spec_a, spec_b) in enumerate(rows):
        left = fig.add_subplot(len(rows), 2, 2 * r + 1)
        right = fig.add_subplot(len(rows), 2, 2 * r + 2, sharey=left)
        for ax, (nodes, weights), label in ((left, spec_a, labels[0]), (right, spec_b, labels[1])):
            draw_esd(ax, nodes, weights, font_size=9)
            ax.set_title(f"{label}: {title}", fontsize=10)
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _save(fig, path)
