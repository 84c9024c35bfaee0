"""Figures of the report that are not metric-specific: training curves and the
privacy-utility trade-off (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """Loss and train accuracy per epoch, one line per model."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, hist in histories.items():
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        ax_loss.plot(epochs, [h["loss"] for h in hist], marker="o", ms=3, label=name)
        ax_acc.plot(epochs, [h["train_acc"] for h in hist], marker="o", ms=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="train accuracy", title="Train accuracy", ylim=(0, 1.02))
    ax_acc.legend(fontsize=8)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (utility, privacy), both to maximise."""
    front = []
    for i, (u, p) in enumerate(points):
        dominated = any((u2 >= u and p2 >= p) and (u2 > u or p2 > p)
                        for j, (u2, p2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def tradeoff_plot(scores: dict[str, dict], path: str | Path) -> Path:
    """Utility against privacy score, one point per defense (Pareto front marked).
    Defenses without a measured privacy score are listed in the title, not plotted."""
    named = [(n, s["utility"], s["privacy"]) for n, s in scores.items() if "privacy" in s]
    missing = [n for n, s in scores.items() if "privacy" not in s]
    fig, ax = plt.subplots(figsize=(5, 4))
    if named:
        pts = [(u, p) for _, u, p in named]
        front = set(pareto_front(pts))
        for i, (name, u, p) in enumerate(named):
            ax.scatter(p, u, s=60 if i in front else 30, marker="*" if i in front else "o")
            ax.annotate(name, (p, u), textcoords="offset points", xytext=(4, 4), fontsize=8)
        fpts = sorted((pts[i] for i in front), key=lambda t: t[1])
        ax.plot([p for _, p in fpts], [u for u, _ in fpts], "--", lw=1, color="grey")
    else:
        ax.text(0.5, 0.5, "no privacy score measured yet\n(no attack has run)",
                ha="center", va="center", transform=ax.transAxes)
    title = "Privacy-utility trade-off"
    if missing:
        title += f"\n(no attacks measured: {', '.join(missing)})"
    ax.set(xlabel="privacy score", ylabel="utility score", xlim=(0, 1.05), ylim=(0, 1.05), title=title)
    return _save(fig, path)
