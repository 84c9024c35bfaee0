"""Report figures for face verification: ROC on a log-FAR axis (as in insightface / IJB reports,
where only the low-FAR region matters) and genuine-vs-impostor score histograms.
Uses matplotlib's Figure + Agg canvas directly: no pyplot, no display, no global backend change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .verification import _check_scores_labels, roc, tar_at_far

__all__ = ["roc_plot", "score_histogram"]

_FAR_MIN = 1e-4


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def roc_plot(curves: dict, path, title: str | None = None, *, legend: str = "tar",
             xlabel: str = "False accept rate (FAR)", ylabel: str = "True accept rate (TAR)",
             far_min: float = _FAR_MIN) -> Path:
    """ROC per named (scores, labels) curve: FAR on a log x-axis (far_min..1), TAR on y, and in
    each legend entry TAR@FAR=1e-3 (legend="tar") or the AUC (legend="auc"; e.g. membership
    inference, with its own axis labels). Saved as PNG at `path` (parents created)."""
    if not curves:
        raise ValueError("roc_plot needs at least one named (scores, labels) curve")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for name, (scores, labels) in curves.items():
        fpr, tpr, _ = roc(scores, labels)
        if legend == "auc":
            note = f"AUC {float(np.trapezoid(tpr, fpr)):.3f}"
        else:
            note = f"TAR@FAR=1e-3: {tar_at_far(scores, labels, 1e-3):.4f}"
        # fpr == 0 cannot sit on a log axis: pin it just left of the visible range so lines start at the edge
        ax.plot(np.maximum(fpr, far_min / 10), tpr, lw=1.5, label=f"{name} ({note})")
    grid = np.logspace(np.log10(far_min), 0, 50)
    ax.plot(grid, grid, ls="--", lw=0.8, color="grey", label="chance")
    ax.set_xscale("log")
    ax.set_xlim(far_min, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def score_histogram(scores, labels, path, title: str | None = None, bins: int = 60) -> Path:
    """Overlaid genuine vs impostor score histograms (densities, shared bins), saved as PNG."""
    s, y = _check_scores_labels(scores, labels)
    edges = np.histogram_bin_edges(s, bins=bins)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if (~y).any():
        ax.hist(s[~y], bins=edges, density=True, alpha=0.55, color="tab:red", label=f"impostor (n={int((~y).sum())})")
    if y.any():
        ax.hist(s[y], bins=edges, density=True, alpha=0.55, color="tab:blue", label=f"genuine (n={int(y.sum())})")
    ax.set_xlabel("Similarity score")
    ax.set_ylabel("Density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)
