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


# The measure a sweep is drawn against, per attack: (key in the attack's block, axis label).
SWEEP_MEASURES = {
    "representation_recovery": ("ssim", "recovery SSIM"),
    "template_inversion": ("sar_type2", "template-inversion SAR type 2"),
    "model_inversion": ("top1", "model-inversion top-1"),
    "membership_inference": ("auc", "membership AUC"),
    "retrieval_leakage": ("top1", "retrieval top-1"),
    "attribute_inference": ("max_gain", "attribute probe: balanced accuracy - chance (max)"),
}


def sweep_measure(attack: str, measures: dict) -> float | None:
    """The value a sweep point is drawn at for `attack` (None when not measured)."""
    if attack == "attribute_inference":
        gains = [m["balanced_accuracy"] - m["chance"] for m in measures.values()]
        return max(gains) if gains else None
    key = SWEEP_MEASURES.get(attack, (None,))[0]
    return measures.get(key)


def sweep_plot(sweeps: dict[str, dict], path: str | Path) -> Path:
    """One panel per swept defense: verification accuracy against the success of each
    attack the sweep targets (lower is more private), points labelled by the knob value."""
    swept = {d: s for d, s in sweeps.items() if s.get("points")}
    n = max(1, len(swept))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    if not swept:
        axes[0][0].text(0.5, 0.5, "no sweep configured", ha="center", va="center", transform=axes[0][0].transAxes)
    for ax, (defense, s) in zip(axes[0], swept.items()):
        attacks = sorted({a for p in s["points"] for a in p.get("attacks", {})})
        for attack in attacks:
            pts = [(sweep_measure(attack, p["attacks"][attack]), p["utility"]["verification_accuracy"], p["value"])
                   for p in s["points"] if attack in p.get("attacks", {})]
            pts = [t for t in pts if t[0] is not None]
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=SWEEP_MEASURES.get(
                attack, (None, attack))[1])
            for x, y, v in pts:
                ax.annotate(f"{s['knob']}={v:g}" if isinstance(v, (int, float)) else str(v), (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(title=f"{defense}: sweep of {s['knob']}", xlabel="attack success (lower = more private)",
               ylabel="verification accuracy")
        ax.legend(fontsize=7)
    return _save(fig, path)
