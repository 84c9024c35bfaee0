"""Figures of the report that are not metric-specific: training curves, the
privacy-utility trade-off with its Pareto front, the defense x attack success matrix and
the sweeps (matplotlib Figure + Agg canvas, PNG files; no pyplot, so no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from components.metrics.plots import roc_plot
from components.metrics.advantage import RESERVED
from components.reporting.scores import RECONSTRUCTION_ATTACKS, advantages, compute_scores


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def training_curves(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """Loss and train accuracy per epoch, one line per model."""
    fig = Figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
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


# ---------------------------------------------------------------- trade-off

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, both coordinates
    maximised: a point is dominated by one at least as good in both and better in one.
    Equal points do not dominate each other, so ties are all kept."""
    front = []
    for i, (u, p) in enumerate(points):
        dominated = any(u2 >= u and p2 >= p and (u2 > u or p2 > p)
                        for j, (u2, p2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


@dataclass(frozen=True)
class TradeoffPoint:
    """One system on the trade-off plot: a defense at its operating point (scored on the
    whole attack battery) or one point of its sweep (scored on the sweep's attacks only)."""

    label: str
    defense: str
    utility: float
    privacy: float | None          # None: no attack measured, not plotted
    sweep: bool = False
    attacks: tuple[str, ...] = field(default=())   # the attacks the privacy score rests on
    utility_ci: tuple[float, float] | None = None  # 95% intervals (metrics.json scores.ci95)
    privacy_ci: tuple[float, float] | None = None


def tradeoff_points(defenses: dict[str, dict], baseline: str = "baseline") -> list[TradeoffPoint]:
    """The points of the trade-off plot from metrics.json's `defenses` block. Sweep points
    get their scores from `compute_scores` on what their sweep measured, with utility
    relative to the baseline's, like the defenses' own scores."""
    base = defenses[baseline]["utility"]
    points = []
    for name, d in defenses.items():
        ci = d["scores"].get("ci95", {})
        points.append(TradeoffPoint(name, name, d["scores"]["utility"], d["scores"].get("privacy"),
                                    attacks=tuple(sorted(d.get("attacks", {}))),
                                    utility_ci=_pair(ci.get("utility")), privacy_ci=_pair(ci.get("privacy"))))
        sweep = d.get("sweep") or {}
        for p in sweep.get("points", []):
            if p.get("source") == "operating point":
                continue      # the defense's own point, drawn above with its whole battery
            s = compute_scores(p.get("attacks", {}), p["utility"], base, d.get("threat_model"))
            value = f"{p['value']:g}" if isinstance(p["value"], (int, float)) else str(p["value"])
            series = f" {p['series']}" if p.get("series") else ""
            points.append(TradeoffPoint(f"{name}{series} {sweep['knob']}={value}", name, s["utility"], s.get("privacy"),
                                        sweep=True, attacks=tuple(sorted(p.get("attacks", {})))))
    return points


def _pair(ci) -> tuple[float, float] | None:
    return None if ci is None else (float(ci[0]), float(ci[1]))


def _errors(value: float, ci: tuple[float, float] | None) -> list[list[float]] | None:
    """matplotlib's [[below], [above]] error lengths of an interval around a value."""
    return None if ci is None else [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def tradeoff_plot(points: list[TradeoffPoint], path: str | Path) -> Path:
    """Utility score against privacy score, one marker per defense (circle, with its 95%
    intervals as error bars where measured) and per sweep point (triangle, the defense's
    colour); the Pareto front over all plotted points is ringed and drawn as a step line.
    Unscored systems are named in the title."""
    scored = [p for p in points if p.privacy is not None]
    unscored = [p.label for p in points if p.privacy is None]
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    if scored:
        front = pareto_front([(p.utility, p.privacy) for p in scored])
        colours = {d: f"C{i % 10}" for i, d in enumerate(dict.fromkeys(p.defense for p in scored))}
        for p in scored:
            ax.scatter(p.privacy, p.utility, marker="^" if p.sweep else "o", s=30 if p.sweep else 60,
                       color=colours[p.defense], zorder=3)
            if p.privacy_ci or p.utility_ci:   # 95% intervals, bootstrap over identities
                ax.errorbar(p.privacy, p.utility, xerr=_errors(p.privacy, p.privacy_ci),
                            yerr=_errors(p.utility, p.utility_ci), fmt="none", ecolor=colours[p.defense],
                            elinewidth=1, capsize=2, alpha=0.7, zorder=2)
            ax.annotate(p.label, (p.privacy, p.utility), textcoords="offset points", xytext=(4, 4),
                        fontsize=7 if p.sweep else 8)
        fpts = sorted(((scored[i].privacy, scored[i].utility) for i in front))
        ax.scatter([x for x, _ in fpts], [y for _, y in fpts], s=160, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=4, label="Pareto front (non-dominated)")
        # the boundary of the dominated region: utility steps down as privacy grows
        ax.step([x for x, _ in fpts], [y for _, y in fpts], where="pre", ls="--", lw=1, color="black", zorder=2)
        ax.scatter([], [], marker="o", color="grey", label="defense (whole attack battery)")
        if any(p.sweep for p in scored):
            ax.scatter([], [], marker="^", color="grey", s=30,
                       label="sweep point (scored only on the attacks its sweep ran)")
        ax.legend(fontsize=7, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no privacy score measured yet\n(no attack has run)",
                ha="center", va="center", transform=ax.transAxes)
    title = "Privacy-utility trade-off"
    if unscored:
        title += f"\n(no attacks measured: {', '.join(unscored)})"
    ax.set(xlabel="privacy score (higher = more private)", ylabel="utility score (accuracy / baseline)",
           xlim=(0, 1.05), ylim=(0, 1.05), title=title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- advantages with intervals

def advantage_plot(defenses: dict[str, dict], path: str | Path) -> Path:
    """One panel per attack: each defense's advantage (0 at chance, 1 at total success) with
    its 95% interval; filled markers where the defense claims to stop the attack, hollow
    where it does not (its threat model), none where the attack did not run."""
    attacks = list(dict.fromkeys(a for d in defenses.values() for a in d.get("attacks", {})))
    names = list(defenses)
    cols = min(3, max(1, len(attacks)))
    rows = -(-max(1, len(attacks)) // cols)
    fig = Figure(figsize=(2.8 * cols + 1.2, rows * (0.3 * len(names) + 1.0) + 0.5))   # fits a 1,100 px page
    grid = fig.subplots(rows, cols, squeeze=False, sharey=True)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(attacks):]:
        ax.set_visible(False)
    for ax, attack in zip(axes, attacks):
        for y, name in enumerate(names):
            block = defenses[name].get("attacks", {}).get(attack)
            if not block or "advantage" not in block:
                continue
            adv = float(block["advantage"])
            ci = _pair(block.get("ci95", {}).get("advantage"))
            in_scope = attack in (defenses[name].get("threat_model") or {}).get("in_scope", [])
            colour = f"C{y % 10}"
            ax.errorbar(adv, y, xerr=_errors(adv, ci), fmt="o", color=colour, capsize=2, ms=5,
                        mfc=colour if in_scope else "white")
        ax.set(title=attack.replace("_", " "), xlim=(-0.05, 1.05), xlabel="advantage")
        ax.grid(True, axis="x", alpha=0.3)
    grid[0][0].set_yticks(range(len(names)), names)
    grid[0][0].invert_yaxis()
    fig.suptitle("Attack advantage with 95% intervals (filled: in the defense's threat model)", fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------- attack matrix

@dataclass
class AttackMatrix:
    """Defense x attack-measure table. `values[i, j]` is NaN where nothing was measured;
    `not_applicable[i, j]` marks cells whose attack does not apply to the defense (the
    reason is in metrics.json's `not_applicable` and the report's tables)."""

    rows: list[str]
    columns: list[str]
    values: np.ndarray
    not_applicable: np.ndarray
    in_scope: np.ndarray | None = None   # cells of attacks the defense claims to stop (framed)


def _matrix(defenses: dict[str, dict], measured: dict[str, dict[str, float]], extra: list[str]) -> AttackMatrix:
    columns = list(dict.fromkeys(c for m in measured.values() for c in m))
    columns += [e for e in extra if not any(c.split(".")[0] == e.split(".")[0] for c in columns)]
    rows = list(defenses)
    values = np.full((len(rows), len(columns)), np.nan)
    na = np.zeros((len(rows), len(columns)), dtype=bool)
    scope = np.zeros((len(rows), len(columns)), dtype=bool)
    for i, name in enumerate(rows):
        reasons = defenses[name].get("not_applicable", {})
        claimed = (defenses[name].get("threat_model") or {}).get("in_scope", [])
        for j, col in enumerate(columns):
            if col in measured[name]:
                values[i, j] = measured[name][col]
            na[i, j] = col.split(".")[0] in reasons
            scope[i, j] = col.split(".")[0] in claimed
    return AttackMatrix(rows, columns, values, na, scope)


def attack_matrix(defenses: dict[str, dict]) -> AttackMatrix:
    """Each defense's advantage per attack (components.metrics.advantage: 0 at chance, 1 at
    total success), one column per attack; attacks that apply to no defense get a column
    of "n/a"."""
    measured = {n: advantages(d.get("attacks", {})) for n, d in defenses.items()}
    extra = list(dict.fromkeys(a for d in defenses.values() for a in d.get("not_applicable", {})))
    return _matrix(defenses, measured, extra)


def ssim_matrix(defenses: dict[str, dict]) -> AttackMatrix:
    """SSIM of each reconstruction attack's faces to the originals (higher = better
    reconstructions = less private), the visual half of the privacy score."""
    measured = {n: {f"{a}.ssim": d["attacks"][a]["ssim"] for a in RECONSTRUCTION_ATTACKS
                    if "ssim" in d.get("attacks", {}).get(a, {})} for n, d in defenses.items()}
    extra = [a for a in RECONSTRUCTION_ATTACKS if any(a in d.get("not_applicable", {}) for d in defenses.values())]
    return _matrix(defenses, measured, [f"{a}.ssim" for a in extra])


def cell_text(matrix: AttackMatrix, i: int, j: int) -> str:
    """What a cell shows: the value, "n/a" (does not apply) or "-" (not measured)."""
    if not np.isnan(matrix.values[i, j]):
        return f"{matrix.values[i, j]:.2f}"
    return "n/a" if matrix.not_applicable[i, j] else "-"


def _matrix_panel(fig: Figure, ax, matrix: AttackMatrix, title: str, cbar_label: str) -> None:
    shown = np.ma.masked_invalid(matrix.values)
    im = ax.imshow(shown, cmap=colormaps["Reds"].with_extremes(bad="#eeeeee"), vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(matrix.rows)):
        for j in range(len(matrix.columns)):
            v = matrix.values[i, j]
            ax.text(j, i, cell_text(matrix, i, j), ha="center", va="center", fontsize=8,
                    color="white" if not np.isnan(v) and v > 0.6 else "black")
    if matrix.in_scope is not None:
        for i, j in zip(*np.nonzero(matrix.in_scope)):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(len(matrix.columns)), [c.replace(".", "\n", 1) for c in matrix.columns],
                  fontsize=7, rotation=0)
    ax.set_yticks(range(len(matrix.rows)), matrix.rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(cbar_label, fontsize=8)


def attack_matrix_figure(defenses: dict[str, dict]) -> Figure:
    """Left: attack success per defense and attack (Reds, 0 = no success). Right: the
    reconstruction attacks' SSIM. Cells: the value, "n/a" (not applicable) or "-" (not run)."""
    success, ssim = attack_matrix(defenses), ssim_matrix(defenses)
    panels = [(success, "Attack advantage (lower = more private; framed: in the defense's scope)", "advantage")]
    if ssim.columns:
        panels.append((ssim, "Reconstruction SSIM (lower = more private)", "SSIM"))
    widths = [max(2, len(m.columns)) for m, _, _ in panels]
    fig = Figure(figsize=(1.1 * sum(widths) + 2.5 * len(panels), 0.45 * len(success.rows) + 2.2))
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, (matrix, title, label) in zip(axes, panels):
        if matrix.columns:
            _matrix_panel(fig, ax, matrix, title, label)
        else:
            ax.text(0.5, 0.5, "no attack measured yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    return fig


def attack_matrix_plot(defenses: dict[str, dict], path: str | Path) -> Path:
    """The defense x attack matrix (attack_matrix_figure) as a PNG."""
    return _save(attack_matrix_figure(defenses), path)


# ---------------------------------------------------------------- sweeps

# The measure a sweep is drawn against, per attack: (key in the attack's block, axis label).
SWEEP_MEASURES = {
    "representation_recovery": ("ssim", "recovery SSIM"),
    "template_inversion": ("sar_type2", "template-inversion SAR type 2"),
    "model_inversion": ("top1", "model-inversion top-1"),
    "membership_inference": ("auc", "membership AUC"),
    "retrieval_leakage": ("top1", "retrieval top-1"),
}


def sweep_series(attack: str, measures: dict) -> dict[str, float]:
    """{series label: value} a sweep point is drawn at for `attack` ({} when not measured).
    The attribute probe gives one series per attribute (balanced accuracy - chance): a
    defense that hides one attribute shows it falling while the others stay, where the
    maximum over attributes would show only whichever leaks most."""
    if attack == "attribute_inference":
        return {f"attribute probe: {a} (bal. acc. - chance)": m["balanced_accuracy"] - m["chance"]
                for a, m in measures.items() if a not in RESERVED}
    key, label = SWEEP_MEASURES.get(attack, (None, attack))
    return {label: measures[key]} if measures.get(key) is not None else {}


def sweep_plot(sweeps: dict[str, dict], path: str | Path) -> Path:
    """One panel per swept defense: verification accuracy against the success of each
    attack the sweep targets (lower is more private), points labelled by the knob value;
    one curve per measure and, where the sweep names series, per series."""
    swept = {d: s for d, s in sweeps.items() if s.get("points")}
    n = max(1, len(swept))
    fig = Figure(figsize=(4.2 * n, 3.6))
    axes = fig.subplots(1, n, squeeze=False)
    if not swept:
        axes[0][0].text(0.5, 0.5, "no sweep configured", ha="center", va="center", transform=axes[0][0].transAxes)
    for ax, (defense, s) in zip(axes[0], swept.items()):
        series: dict[str, list] = {}
        for p in s["points"]:
            for attack, measures in sorted(p.get("attacks", {}).items()):
                for label, x in sweep_series(attack, measures).items():
                    label = f"{p['series']}: {label}" if p.get("series") else label
                    series.setdefault(label, []).append((x, p["utility"]["verification_accuracy"], p["value"]))
        for label, pts in sorted(series.items()):
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=label)
            for x, y, v in pts:
                ax.annotate(f"{s['knob']}={v:g}" if isinstance(v, (int, float)) else str(v), (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(title=f"{defense}: sweep of {s['knob']}", xlabel="attack success (lower = more private)",
               ylabel="verification accuracy")
        ax.legend(fontsize=7)
    return _save(fig, path)


def leakage_bound_series(sweep: dict) -> dict[str, list[tuple[float, float, float, float]]]:
    """{attribute (prefixed by the series, where the sweep has several): [(knob value, bound
    bits, measured bits, H(S) bits)]} of the sweep points that report a leakage bound
    (dvpf's `leakage` measures); {} when none does."""
    series: dict[str, list] = {}
    for p in sweep.get("points", []):
        for attribute, m in (p.get("measures", {}).get("leakage") or {}).items():
            if isinstance(m, dict) and m.get("leakage_bound_bits") is not None:
                label = f"{p['series']}: {attribute}" if p.get("series") else attribute
                series.setdefault(label, []).append((float(p["value"]), m["leakage_bound_bits"],
                                                         m["leakage_bits"], m["entropy_bits"]))
    return {a: sorted(pts) for a, pts in series.items()}


def leakage_bound_plot(sweeps: dict[str, dict], path: str | Path) -> Path | None:
    """One panel per sweep with a leakage bound: per attribute, the bound on I(S;Z) and the
    fresh probe's measured leakage (bits) against the knob, with H(S) as the ceiling; None
    when no sweep reports a bound."""
    panels = {d: leakage_bound_series(s) for d, s in sweeps.items()}
    panels = {d: series for d, series in panels.items() if series}
    if not panels:
        return None
    fig = Figure(figsize=(6.4 * len(panels), 3.6))
    for ax, (defense, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        for i, (attribute, pts) in enumerate(sorted(series.items())):
            colour = f"C{i}"
            x = [v for v, *_ in pts]
            ax.plot(x, [b for _, b, _, _ in pts], color=colour, linestyle="--", marker="^",
                    label=f"{attribute}: bound")
            ax.plot(x, [m for _, _, m, _ in pts], color=colour, marker="o", label=f"{attribute}: measured")
            ax.axhline(pts[0][3], color=colour, linestyle=":", linewidth=0.8, label=f"{attribute}: H(S)")
        positive = [v for pts in series.values() for v, *_ in pts if v > 0]
        if positive and max(positive) >= 10 * min(positive):   # a knob over decades; 0 stays on the axis
            ax.set_xscale("symlog", linthresh=min(positive))
            ax.set_xlim(left=0)
        ax.set(title=f"{defense}: leakage against {sweeps[defense].get('knob', 'knob')}",
               xlabel=sweeps[defense].get("knob", "knob"), ylabel="bits about the attribute")
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, path)


# ---------------------------------------------------------------- the report's figures

def report_figures(metrics: dict, reports: str | Path, *, labels: np.ndarray, pair_scores: dict[str, np.ndarray],
                   histories: dict[str, list[dict]], sweeps: dict[str, dict],
                   attack_artifacts: dict[str, dict[str, dict[str, str]]],
                   defense_artifacts: dict[str, dict[str, str]]) -> dict[str, dict[str, Path]]:
    """Draw the report's figures into `reports` and group them, with the files attacks and
    defenses wrote (reconstruction grids, membership ROCs, score tables), into sections:
    {section title: {caption: file}}, the shape html.render_report takes."""
    reports = Path(reports)
    overview = {
        "Privacy-utility trade-off: one point per defense and per sweep point (sweep points are scored "
        "only on the attacks their sweep ran); ringed points and the step line: the Pareto front":
            tradeoff_plot(tradeoff_points(metrics["defenses"]), reports / "tradeoff.png"),
        "Attack advantage (0 at chance, 1 at total success; framed cells: attacks the defense claims to stop) "
        "and reconstruction SSIM per defense (n/a: the attack does not apply, reasons in "
        "the Attacks section; -: not run)": attack_matrix_plot(metrics["defenses"], reports / "attack_matrix.png"),
        "Attack advantage per defense with its 95% interval (bootstrap over identities); filled: attacks "
        "the defense claims to stop": advantage_plot(metrics["defenses"], reports / "advantages.png"),
    }
    rocs = {"Verification ROC on the test pairs, per defense (FAR on a log axis)": roc_plot(
        {d: (scores, labels) for d, scores in pair_scores.items()}, reports / "roc.png",
        title="Verification ROC per defense")}
    attack_outputs = {}
    for d, attacks in attack_artifacts.items():   # grids show public identities only
        for attack, files in attacks.items():
            for label, path in files.items():
                (rocs if "roc" in label else attack_outputs)[f"{d}: {attack} ({label})"] = Path(path)
    pictures = {f"{d}: {label}": Path(path) for d, files in defense_artifacts.items() for label, path in files.items()}
    training = {"Training curves": training_curves(histories, reports / "training.png")}
    if any(s.get("points") for s in sweeps.values()):
        training["Sweeps: utility against the privacy measure each defense targets"] = sweep_plot(
            sweeps, reports / "sweeps.png")
        bound = leakage_bound_plot(sweeps, reports / "leakage_bound.png")
        if bound is not None:
            training["Leakage bound (dashed; the sampled release, upper bound in expectation) and measured "
                     "leakage (a fresh probe on unseen identities) against the knob"] = bound
    return {"Trade-off and attack matrix": overview, "ROC curves": rocs,
            "Reconstructions and other attack outputs": attack_outputs,
            "Defense pictures": pictures, "Training and sweeps": training}
