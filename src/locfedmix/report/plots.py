"""The plots shared by `locfedmix report` and benchmarks/reproduction_report.py. They use matplotlib's Figure API
(Agg when saved as PNG), never pyplot, so that importing them leaves the user's backend and open figures alone."""

from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 120
FIGSIZE = (6.4, 4.2)

# x axis name → (axis label, value of one metrics row)
X_AXES: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "round": ("round", lambda row: row["round"]),
    "simulated_seconds": ("simulated seconds", lambda row: row["simulated_seconds"]),
    "megabytes": ("MB sent (up + down)", lambda row: (row["bytes_up"] + row["bytes_down"]) / 1e6),
}

# Cells with more annotated counts than this would be unreadable: the colour alone tells.
MAX_ANNOTATED_CELLS = 300


def new_axes(figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    fig = Figure(figsize=figsize, dpi=DPI)
    return fig, fig.subplots()


def finish(fig: Figure, ax: Axes, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Label, grid, legend, and save at DPI: every plot of a report looks the same."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def accuracy_curves(groups: dict[str, list[list[dict[str, Any]]]], x: str, path: Path, title: str,
                    targets: list[float] = ()) -> Path:
    """Test accuracy against one of X_AXES, one line per group: the mean over the group's runs (seeds), shaded
    ± one std where it has several; runs of unequal length are cut to the shortest. Each target accuracy is a
    dashed horizontal line."""
    fig, ax = new_axes()
    for target in targets:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    xlabel, value = X_AXES[x]
    for label, runs in groups.items():
        n = min(len(rows) for rows in runs)
        xs = np.mean([[value(row) for row in rows[:n]] for rows in runs], axis=0)
        ys = np.array([[row["test_accuracy"] for row in rows[:n]] for rows in runs])
        ax.plot(xs, ys.mean(0), marker="o", markersize=3, label=label)
        if len(runs) > 1:
            ax.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), alpha=0.15)
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return finish(fig, ax, xlabel, "test accuracy", title, path)


def partition_figure(histograms: list[list[int]]) -> Figure:
    """Clients (rows) × classes (columns), coloured by sample count and, where few enough, annotated with it."""
    counts = np.asarray(histograms)
    n_clients, n_classes = counts.shape
    fig, ax = new_axes((max(4.0, 0.5 * n_classes + 2.5), min(max(2.8, 0.32 * n_clients + 1.4), 12.0)))
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xticks(range(n_classes))
    if n_clients <= 40:
        ax.set_yticks(range(n_clients))
    if counts.size <= MAX_ANNOTATED_CELLS:
        bright = 0.6 * counts.max()
        for (client, cls), count in np.ndenumerate(counts):
            ax.text(cls, client, str(count), ha="center", va="center", fontsize=6,
                    color="black" if count > bright else "white")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(f"{n_clients} clients × {n_classes} classes")
    fig.tight_layout()
    return fig


def partition_heatmap(histograms: list[list[int]], path: Path) -> Path:
    partition_figure(histograms).savefig(path, dpi=DPI)
    return path
