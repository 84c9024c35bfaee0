"""Scores and metrics.json follow DESIGN.md section 5; nothing unmeasured is reported."""

import json

import pytest

from components.reporting.figures import pareto_front, tradeoff_plot
from components.reporting.html import render_report
from components.reporting.metrics_file import build_metrics, write_json
from components.reporting.scores import compute_scores

UTIL = {"verification_accuracy": 0.9, "verification_std": 0.01, "tar_at_far_1e-3": 0.5, "eer": 0.1, "rank1": 0.8}


def test_scores_follow_the_contract_formula():
    attacks = {
        "template_inversion": {"ssim": 0.6, "psnr_db": 15.0, "sar_type1": 0.3, "sar_type2": 0.2},
        "representation_recovery": {"ssim": 0.4, "psnr_db": 12.0, "sar_type1": 0.1, "sar_type2": 0.05},
        "model_inversion": {"top1": 0.1, "top5": 0.3, "knn_dist": 1.0},
        "membership_inference": {"auc": 0.8, "tpr_at_fpr_1e-2": 0.1, "advantage": 0.6},
        "attribute_inference": {"sex": {"balanced_accuracy": 0.75, "chance": 0.5, "leakage_bits": 0.2}},
    }
    s = compute_scores(attacks, accuracy=0.81, baseline_accuracy=0.9)
    v = 1 - 0.6
    a = 1 - max(0.2, 0.05, 0.1, 2 * 0.8 - 1, (0.75 - 0.5) / 0.5)
    assert s["privacy"] == pytest.approx(0.4 * v + 0.6 * a)
    assert s["utility"] == pytest.approx(0.9)
    assert s["overall"] == pytest.approx(2 * s["privacy"] * s["utility"] / (s["privacy"] + s["utility"]))


def test_utility_is_capped_and_privacy_absent_without_attacks():
    s = compute_scores({}, accuracy=0.95, baseline_accuracy=0.9)
    assert s == {"utility": 1.0}


def test_metrics_file_has_contract_keys_and_refuses_nan(tmp_path):
    results = {"baseline": {"params": {}, "utility": UTIL, "attacks": {},
                            "mlflow": {"run_id": "r", "model_uri": "m", "model_version": "1"}}}
    m = build_metrics({"name": "s", "version": "v", "identities": 3, "images": 9}, results)
    d = m["defenses"]["baseline"]
    assert set(d) == {"params", "utility", "attacks", "scores", "mlflow"}
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
    fig = tradeoff_plot({"baseline": {"utility": 1.0}}, tmp_path / "t.png")
    results = {"baseline": {"params": {"note": "<script>"}, "utility": UTIL, "attacks": {}, "mlflow": {}}}
    m = build_metrics({"name": "<b>x</b>", "version": "v", "identities": 3, "images": 9}, results)
    html = render_report(m, {"trade-off": fig}, tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "<script>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def _utility(acc):
    return {"verification_accuracy": acc, "verification_std": 0.01, "tar_at_far_1e-3": 0.3, "eer": 0.1, "rank1": 0.7}


def test_sweep_and_measures_go_to_metrics_and_plot(tmp_path):
    from PIL import Image

    from components.reporting.figures import sweep_measure, sweep_plot

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
    assert sweep_measure("attribute_inference", {"sex": {"balanced_accuracy": 0.7, "chance": 0.5},
                                                 "skin": {"balanced_accuracy": 0.4, "chance": 0.33}}) == \
        pytest.approx(0.2)
    assert sweep_measure("template_inversion", {"ssim": 0.3, "sar_type2": 0.1}) == 0.1
    path = sweep_plot({"dctdp": m["defenses"]["dctdp"]["sweep"], "baseline": {}}, tmp_path / "s.png")
    with Image.open(path) as img:
        assert img.size[0] > 300                                    # one panel: the swept defense only
