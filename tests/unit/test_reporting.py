"""Scores and metrics.json follow DESIGN.md section 5; nothing unmeasured is reported."""

import json
import re

import numpy as np
import pytest

from components.reporting.figures import (TradeoffPoint, attack_matrix, attack_matrix_figure, attack_matrix_plot,
                                          cell_text, pareto_front, report_figures, ssim_matrix, tradeoff_plot,
                                          tradeoff_points)
from components.reporting.html import render_report
from components.reporting.metrics_file import build_metrics, write_json
from components.reporting.scores import advantages, compute_scores

UTIL = {"verification_accuracy": 0.9, "verification_std": 0.01, "tar_at_far_1e-3": 0.5, "eer": 0.1, "rank1": 0.8}


ATTACKS = {
    "template_inversion": {"ssim": 0.6, "psnr_db": 15.0, "sar_type1": 0.3, "sar_type2": 0.2, "sar_ceiling": 0.5,
                           "advantage": 0.4},
    "representation_recovery": {"ssim": 0.4, "psnr_db": 12.0, "sar_type1": 0.1, "sar_type2": 0.05,
                                "sar_ceiling": 0.5, "advantage": 0.1},
    "model_inversion": {"top1": 0.1, "top5": 0.3, "knn_dist": 1.0, "chance": 0.05, "advantage": 0.05 / 0.95},
    "membership_inference": {"auc": 0.8, "tpr_at_fpr_1e-2": 0.1, "advantage": 0.6},
    "attribute_inference": {"sex": {"balanced_accuracy": 0.75, "chance": 0.5, "leakage_bits": 0.2, "advantage": 0.5},
                            "skin": {"balanced_accuracy": 0.4, "chance": 1 / 3, "leakage_bits": 0.01,
                                     "advantage": 0.1},
                            "advantage": 0.5},
}


def test_scores_follow_the_contract_formula():
    base = {**UTIL, "verification_accuracy": 0.9, "tar_at_far_1e-3": 0.5}
    s = compute_scores(ATTACKS, {**UTIL, "verification_accuracy": 0.81, "tar_at_far_1e-3": 0.45}, base)
    v = 1 - 0.6
    a = 1 - max(0.4, 0.1, 0.05 / 0.95, 0.6, 0.5)
    assert s["privacy"] == pytest.approx(0.4 * v + 0.6 * a) and s["privacy_all"] == s["privacy"]   # no scope
    assert s["utility"] == pytest.approx(0.9)
    assert s["overall"] == pytest.approx(2 * s["privacy"] * s["utility"] / (s["privacy"] + s["utility"]))


def test_privacy_is_taken_over_the_attacks_and_attributes_in_scope():
    dvpf = {"protects": ["template_attributes"], "in_scope": ["attribute_inference"], "note": "",
            "attributes": ["skin"]}
    s = compute_scores(ATTACKS, UTIL, UTIL, dvpf)
    assert s["privacy"] == pytest.approx(1 - 0.1)                     # skin only; no reconstruction in scope
    assert s["privacy_all"] == pytest.approx(0.4 * (1 - 0.6) + 0.6 * (1 - 0.6))
    advface = {"protects": ["stored_templates"], "in_scope": ["template_inversion"], "note": ""}
    assert compute_scores(ATTACKS, UTIL, UTIL, advface)["privacy"] == pytest.approx(0.4 * 0.4 + 0.6 * 0.6)
    assert advantages(ATTACKS)["attribute_inference"] == 0.5 and advantages(ATTACKS, ["skin"])["attribute_inference"] == 0.1
    nothing = {"protects": ["training_images"], "in_scope": ["retrieval_leakage"], "note": ""}
    assert "privacy" not in compute_scores(ATTACKS, UTIL, UTIL, nothing)   # its attack did not run: not invented


def test_utility_is_the_lower_ratio_capped_and_privacy_absent_without_attacks():
    base = {**UTIL, "verification_accuracy": 0.9, "tar_at_far_1e-3": 0.4}
    assert compute_scores({}, {**UTIL, "verification_accuracy": 0.95, "tar_at_far_1e-3": 0.5}, base) == {"utility": 1.0}
    collapsed = compute_scores({}, {**UTIL, "verification_accuracy": 0.88, "tar_at_far_1e-3": 0.1}, base)
    assert collapsed["utility"] == pytest.approx(0.25)                # the strict operating point collapsed
    no_tar = compute_scores({}, {**UTIL, "verification_accuracy": 0.45, "tar_at_far_1e-3": 0.0},
                            {**base, "tar_at_far_1e-3": 0.0})
    assert no_tar["utility"] == pytest.approx(0.5)                    # the baseline's TAR is 0: accuracy alone


def test_metrics_file_has_contract_keys_and_refuses_nan(tmp_path):
    results = {"baseline": {"params": {}, "utility": UTIL, "attacks": {},
                            "mlflow": {"run_id": "r", "model_uri": "m", "model_version": "1"}}}
    m = build_metrics({"name": "s", "version": "v", "identities": 3, "images": 9}, results)
    d = m["defenses"]["baseline"]
    assert set(d) == {"params", "threat_model", "utility", "attacks", "scores", "mlflow"}
    path = write_json(m, tmp_path / "r" / "metrics.json")
    assert json.loads(path.read_text()) == m
    bad = {"baseline": {**results["baseline"], "utility": {**UTIL, "eer": float("nan")}}}
    with pytest.raises(ValueError, match="eer is nan"):
        build_metrics({"name": "s"}, bad)
    with pytest.raises(ValueError, match="baseline"):
        build_metrics({"name": "s"}, {"dctdp": results["baseline"]})


def test_pareto_front_drops_dominated_points():
    pts = [(0.9, 0.2), (0.8, 0.5), (0.7, 0.4), (0.5, 0.9)]
    assert pareto_front(pts) == [0, 1, 3]


def test_report_html_inlines_figures_and_escapes(tmp_path):
    fig = tradeoff_plot([TradeoffPoint("baseline", "baseline", 1.0, None)], tmp_path / "t.png")
    results = {"baseline": {"params": {"note": "<script>"}, "utility": UTIL, "attacks": {}, "mlflow": {}}}
    m = build_metrics({"name": "<b>x</b>", "version": "v", "identities": 3, "images": 9}, results)
    html = render_report(m, {"Figures": {"trade-off": fig}}, tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "<script>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def _utility(acc):
    return {"verification_accuracy": acc, "verification_std": 0.01, "tar_at_far_1e-3": 0.3, "eer": 0.1, "rank1": 0.7}


def test_sweep_and_measures_go_to_metrics_and_plot(tmp_path):
    from PIL import Image

    from components.reporting.figures import sweep_plot, sweep_series

    points = [{"value": v, "operating_point": {"eps_mean": v}, "utility": _utility(acc),
               "attacks": {"representation_recovery": {"ssim": ssim, "psnr_db": 20.0, "sar_type1": 0.1,
                                                       "sar_type2": 0.0}}, "measures": {}}
              for v, acc, ssim in ((1.0, 0.6, 0.2), (10.0, 0.9, 0.5))]
    results = {"baseline": {"utility": _utility(0.95)},
               "dctdp": {"utility": _utility(0.9), "measures": {"eps_max": 3.0},
                         "sweep": {"knob": "eps_mean", "points": points}}}
    m = build_metrics({"name": "x", "version": "v", "identities": 2, "images": 4}, results)
    assert m["defenses"]["dctdp"]["measures"] == {"eps_max": 3.0}
    assert [p["value"] for p in m["defenses"]["dctdp"]["sweep"]["points"]] == [1.0, 10.0]
    assert "sweep" not in m["defenses"]["baseline"]                # nothing swept, nothing reported
    attrs = sweep_series("attribute_inference", {"sex": {"balanced_accuracy": 0.7, "chance": 0.5},
                                                 "skin": {"balanced_accuracy": 0.4, "chance": 0.33}})
    assert len(attrs) == 2                                          # one series per attribute, not their max
    assert [v for k, v in sorted(attrs.items()) if "sex" in k] == [pytest.approx(0.2)]
    assert [v for k, v in sorted(attrs.items()) if "skin" in k] == [pytest.approx(0.07)]
    assert sweep_series("template_inversion", {"ssim": 0.3, "sar_type2": 0.1}) == {"template-inversion SAR type 2": 0.1}
    assert sweep_series("model_inversion", {}) == {}
    path = sweep_plot({"dctdp": m["defenses"]["dctdp"]["sweep"], "baseline": {}}, tmp_path / "s.png")
    with Image.open(path) as img:
        assert img.size[0] > 300                                    # one panel: the swept defense only


# ---------------------------------------------------------------- Pareto front, trade-off, attack matrix

def test_pareto_front_keeps_exactly_the_non_dominated_points():
    # (utility, privacy), both maximised
    pts = [(0.9, 0.2), (0.8, 0.5), (0.7, 0.4), (0.5, 0.9), (0.5, 0.8), (0.9, 0.1)]
    # (0.7, 0.4) < (0.8, 0.5) in both; (0.5, 0.8) ties (0.5, 0.9) on utility and loses on privacy;
    # (0.9, 0.1) ties (0.9, 0.2) on utility and loses on privacy
    assert pareto_front(pts) == [0, 1, 3]
    assert pareto_front([]) == []
    assert pareto_front([(0.3, 0.3)]) == [0]


def test_pareto_front_keeps_equal_points_and_trade_offs():
    assert pareto_front([(0.6, 0.6), (0.6, 0.6), (0.5, 0.5)]) == [0, 1]   # equal points: neither dominates
    assert pareto_front([(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]) == [0, 1, 2]   # a trade-off curve: all kept
    assert pareto_front([(0.5, 0.5), (0.5, 0.5), (0.5, 0.6)]) == [2]         # one better copy dominates both


RR = {"ssim": 0.5, "psnr_db": 20.0, "sar_type1": 0.3, "sar_type2": 0.2, "sar_ceiling": 0.5, "advantage": 0.4}


def _defenses() -> dict:
    """metrics.json's defenses block: a baseline with the full battery, a swept defense whose
    sweep ran representation recovery only, and one that no attack has touched yet."""
    full = {"template_inversion": {"ssim": 0.7, "psnr_db": 18.0, "sar_type1": 0.5, "sar_type2": 0.4,
                                   "sar_ceiling": 0.5, "advantage": 0.8},
            "representation_recovery": RR,
            "model_inversion": {"top1": 0.8, "top5": 0.9, "knn_dist": 1.0, "chance": 0.1, "advantage": 0.7 / 0.9},
            "membership_inference": {"auc": 0.75, "tpr_at_fpr_1e-2": 0.1, "advantage": 0.5},
            "attribute_inference": {"sex": {"balanced_accuracy": 0.8, "chance": 0.5, "leakage_bits": 0.2,
                                            "advantage": 0.6}, "advantage": 0.6}}
    dctdp_attacks = {"representation_recovery": {**RR, "ssim": 0.3, "sar_type2": 0.05, "advantage": 0.1},
                     "membership_inference": {"auc": 0.55, "tpr_at_fpr_1e-2": 0.0, "advantage": 0.1}}
    points = [{"value": v, "operating_point": {"eps_mean": v}, "utility": _utility(acc),
               "attacks": {"representation_recovery": {**RR, "ssim": ssim, "sar_type2": sar, "advantage": sar / 0.5}}}
              for v, acc, ssim, sar in ((1.0, 0.6, 0.1, 0.0), (50.0, 0.85, 0.6, 0.3))]
    results = {"baseline": {"utility": _utility(0.9), "attacks": full,
                            "not_applicable": {"retrieval_leakage": "publishes no reconstructions"}},
               "dctdp": {"utility": _utility(0.8), "attacks": dctdp_attacks,
                         "threat_model": {"protects": ["client_representation"], "in_scope": ["representation_recovery"],
                                          "note": "claims recovery only"},
                         "not_applicable": {"template_inversion": "no template decoder fits",
                                            "retrieval_leakage": "publishes no reconstructions"},
                         "sweep": {"knob": "eps_mean", "points": points}},
               "ppfrfd": {"utility": _utility(0.7)}}
    return build_metrics({"name": "x", "version": "v", "identities": 2, "images": 4}, results)["defenses"]


def test_sweep_points_are_scored_on_the_attacks_their_sweep_ran():
    defenses = _defenses()
    pts = {p.label: p for p in tradeoff_points(defenses)}
    assert set(pts) == {"baseline", "dctdp", "ppfrfd", "dctdp eps_mean=1", "dctdp eps_mean=50"}
    for name in ("baseline", "dctdp"):                       # a defense's point is its own scores
        assert (pts[name].utility, pts[name].privacy) == (defenses[name]["scores"]["utility"],
                                                          defenses[name]["scores"]["privacy"])
        assert not pts[name].sweep
    assert pts["ppfrfd"].privacy is None                     # nothing measured: not invented
    for label, acc, ssim, sar in (("dctdp eps_mean=1", 0.6, 0.1, 0.0), ("dctdp eps_mean=50", 0.85, 0.6, 0.3)):
        p = pts[label]
        assert p.sweep and p.defense == "dctdp" and p.attacks == ("representation_recovery",)
        assert p.utility == pytest.approx(acc / 0.9)         # relative to the baseline, like the defenses
        assert p.privacy == pytest.approx(0.4 * (1 - ssim) + 0.6 * (1 - sar / 0.5))


def test_tradeoff_plot_draws_every_scored_point_and_the_front(tmp_path):
    from PIL import Image

    pts = tradeoff_points(_defenses())
    path = tradeoff_plot(pts, tmp_path / "tradeoff.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 400


def test_attack_matrix_cells_are_the_advantages_and_frame_the_scope(tmp_path):
    defenses = _defenses()
    m = attack_matrix(defenses)
    assert m.rows == ["baseline", "dctdp", "ppfrfd"]
    for i, name in enumerate(m.rows):
        expected = advantages(defenses[name]["attacks"])
        got = {c: m.values[i, j] for j, c in enumerate(m.columns) if not np.isnan(m.values[i, j])}
        assert got == pytest.approx(expected)
    # every attack has a column, also the one that applies to no defense
    assert "retrieval_leakage" in m.columns and "template_inversion" in m.columns
    j_ti, j_rl = m.columns.index("template_inversion"), m.columns.index("retrieval_leakage")
    j_rr = m.columns.index("representation_recovery")
    assert m.in_scope[1, j_rr] and m.in_scope.sum() == 1                  # dctdp claims recovery only
    assert cell_text(m, 1, j_ti) == "n/a" and cell_text(m, 0, j_rl) == "n/a"   # does not apply
    assert cell_text(m, 2, j_ti) == "-"                                        # not run yet
    assert np.all((m.values[~np.isnan(m.values)] >= 0) & (m.values[~np.isnan(m.values)] <= 1))
    ssim = ssim_matrix(defenses)
    assert ssim.columns == ["template_inversion.ssim", "representation_recovery.ssim"]
    assert ssim.values[0].tolist() == [0.7, 0.5] and cell_text(ssim, 1, 0) == "n/a"


def test_attack_matrix_figure_writes_the_values_in_its_cells(tmp_path):
    from PIL import Image

    defenses = _defenses()
    fig = attack_matrix_figure(defenses)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    success_ax = by_title["Attack advantage (lower = more private; framed: in the defense's scope)"]
    ssim_ax = by_title["Reconstruction SSIM (lower = more private)"]
    m = attack_matrix(defenses)
    texts = [t.get_text() for t in success_ax.texts]
    assert texts == [cell_text(m, i, j) for i in range(len(m.rows)) for j in range(len(m.columns))]
    shown = [float(t) for t in texts if re.fullmatch(r"\d\.\d\d", t)]
    assert shown == pytest.approx([v for v in m.values.ravel() if not np.isnan(v)], abs=0.005)
    assert [t.get_text() for t in ssim_ax.texts][:2] == ["0.70", "0.50"]
    assert success_ax.images[0].get_clim() == (0.0, 1.0)   # colour is comparable across reports
    with Image.open(attack_matrix_plot(defenses, tmp_path / "m.png")) as img:
        assert img.format == "PNG"


def test_report_html_holds_tradeoff_matrix_rocs_and_grids_but_no_fake_images(tmp_path):
    from PIL import Image

    defenses = _defenses()
    metrics = {"dataset": {"name": "x", "version": "v", "identities": 2, "images": 4}, "defenses": defenses}
    grid = tmp_path / "attacks" / "rr_grid.png"
    grid.parent.mkdir()
    Image.new("RGB", (8, 8)).save(grid)
    mia_roc = tmp_path / "attacks" / "membership_roc.png"
    Image.new("RGB", (8, 8)).save(mia_roc)
    table = tmp_path / "attacks" / "membership_scores.csv"
    table.write_text("identity,score\n1,0.5\n")
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 20)
    figures = report_figures(
        metrics, tmp_path / "reports", labels=labels,
        pair_scores={d: rng.normal(size=40) + labels for d in defenses},
        histories={"baseline": [{"epoch": 1, "loss": 2.0, "train_acc": 0.2}]},
        sweeps={"dctdp": defenses["dctdp"]["sweep"]},
        attack_artifacts={"baseline": {"representation_recovery": {"grid": str(grid)},
                                       "membership_inference": {"membership_roc": str(mia_roc),
                                                                "membership_scores": str(table)}}},
        defense_artifacts={})
    assert list(figures["ROC curves"]) == ["Verification ROC on the test pairs, per defense (FAR on a log axis)",
                                           "baseline: membership_inference (membership_roc)"]
    html = render_report(metrics, figures, tmp_path / "reports" / "report.html").read_text()
    captions = [c for section in figures.values() for c, p in section.items() if p.suffix == ".png"]
    assert len(captions) == 8   # trade-off, matrix, advantages, 2 ROCs, grid, training, sweeps
    for caption in captions:
        assert f'alt="{caption}"' in html
    assert html.count("<img") == 8 and html.count("data:image/png;base64,") == 8
    assert "<h2>Defense pictures</h2>" not in html          # empty sections are left out
    assert f"<code>{table}</code>" in html                  # the CSV is listed, not inlined as an image
    assert "sweep points are scored only on the attacks their sweep ran" in html
    assert "no template decoder fits" in html               # the reason behind an n/a cell


def test_operating_point_joins_its_sweep_only_when_the_sweep_overrides_nothing():
    from components.reporting.sweeps import with_operating_point

    acc = {"verification_accuracy": 0.9}
    sweep = {"knob": "lam", "attacks": ["attribute_inference"], "params": {}, "attack_params": {},
             "points": [{"value": 0.0, "utility": acc, "attacks": {"attribute_inference": {}}},
                        {"value": 6.0, "utility": acc, "attacks": {"attribute_inference": {}}}]}
    result = {"params": {"lam": 3.0}, "utility": {"verification_accuracy": 0.85},
              "attacks": {"attribute_inference": {"skin": {"balanced_accuracy": 0.6, "chance": 0.33}}}}
    merged = with_operating_point(sweep, result)
    assert [p["value"] for p in merged["points"]] == [0.0, 3.0, 6.0]
    mid = merged["points"][1]
    assert mid["source"] == "operating point" and mid["utility"] == result["utility"]
    assert mid["attacks"] == result["attacks"]
    # a sweep that trains its points differently, or attacks them differently, is another curve
    assert with_operating_point({**sweep, "params": {"epochs": 8}}, result) is not None
    assert len(with_operating_point({**sweep, "params": {"epochs": 8}}, result)["points"]) == 2
    assert len(with_operating_point({**sweep, "attack_params": {"x": {"epochs": 1}}}, result)["points"]) == 2
    assert len(with_operating_point(sweep, {**result, "params": {"lam": 6.0}})["points"]) == 2   # already there
    assert len(with_operating_point(sweep, {**result, "attacks": {}})["points"]) == 2             # not measured
    assert len(with_operating_point({**sweep, "series": {"a": {}}}, result)["points"]) == 2     # several curves


def test_sweep_series_keep_their_names_in_metrics_trade_off_and_plot(tmp_path, monkeypatch):
    """A sweep with series (dctdp's two modes) keeps one curve per series: each point's
    series reaches metrics.json, labels the trade-off point and splits the plot's lines."""
    from matplotlib.figure import Figure

    from components.reporting import figures

    points = [{"value": v, "series": mode, "operating_point": {"eps_mean": v, "mode": mode},
               "utility": _utility(acc), "attacks": {"representation_recovery": {**RR, "ssim": ssim}}}
              for mode, v, acc, ssim in (("project", 2.0, 0.6, 0.1), ("project", 50.0, 0.9, 0.5),
                                         ("tface", 2.0, 0.7, 0.3), ("tface", 50.0, 0.92, 0.8))]
    results = {"baseline": {"utility": _utility(0.95), "attacks": {"representation_recovery": RR}},
               "dctdp": {"utility": _utility(0.9), "attacks": {"representation_recovery": RR},
                         "sweep": {"knob": "eps_mean", "points": points}}}
    defenses = build_metrics({"name": "x", "version": "v", "identities": 2, "images": 4}, results)["defenses"]
    assert [p["series"] for p in defenses["dctdp"]["sweep"]["points"]] == ["project", "project", "tface", "tface"]
    labels = {p.label for p in tradeoff_points(defenses) if p.sweep}
    assert labels == {"dctdp project eps_mean=2", "dctdp project eps_mean=50", "dctdp tface eps_mean=2",
                      "dctdp tface eps_mean=50"}
    drawn = {}

    class Spy(Figure):
        def subplots(self, *a, **k):
            axes = super().subplots(*a, **k)
            for ax in axes.flat:
                original = ax.plot

                def plot(xs, ys, *pa, _original=original, **pk):
                    drawn[pk.get("label")] = (list(xs), list(ys))
                    return _original(xs, ys, *pa, **pk)
                ax.plot = plot
            return axes

    monkeypatch.setattr(figures, "Figure", Spy)
    figures.sweep_plot({"dctdp": defenses["dctdp"]["sweep"]}, tmp_path / "s.png")
    assert drawn == {"project: recovery SSIM": ([0.1, 0.5], [0.6, 0.9]),
                     "tface: recovery SSIM": ([0.3, 0.8], [0.7, 0.92])}


def test_leakage_bound_plot_draws_bound_and_measured_per_series_and_attribute(tmp_path):
    """dvpf's sweep points carry a bound and a measured leakage per attribute: one pair of
    curves per (series, attribute), ordered by the knob; no bound anywhere, no figure."""
    from PIL import Image

    from components.reporting.figures import leakage_bound_plot, leakage_bound_series

    def point(series, lam, bound, measured):
        skin = {"balanced_accuracy": 0.6, "chance": 0.33, "leakage_bits": measured, "leakage_bound_bits": bound,
                "variational_bound_bits": 1.5, "entropy_bits": 1.58, "bound_covers_release": True}
        return {"value": lam, "series": series, "utility": _utility(0.9), "measures": {"leakage": {"skin": skin}}}

    sweep = {"knob": "lam", "points": [point("bound", 10.0, 1.2, 0.3), point("bound", 0.0, 1.5, 0.6),
                                       point("adversarial", 1.0, 1.4, 0.5)]}
    series = leakage_bound_series(sweep)
    assert series == {"bound: skin": [(0.0, 1.5, 0.6, 1.58), (10.0, 1.2, 0.3, 1.58)],
                      "adversarial: skin": [(1.0, 1.4, 0.5, 1.58)]}
    path = leakage_bound_plot({"dvpf": sweep, "dctdp": {"knob": "eps_mean", "points": []}}, tmp_path / "b.png")
    with Image.open(path) as img:
        assert img.size[0] > 300
    assert leakage_bound_plot({"dctdp": {"knob": "eps_mean", "points": [{"value": 1.0, "measures": {}}]}},
                              tmp_path / "none.png") is None
