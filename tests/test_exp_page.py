"""Verdicts of experiment 3 (Page) on synthetic rows that support and that contradict.

Each criterion of ``experiments/page_weight_decay.py`` must be able to say "supported" and
"contradicted": rows are built by hand from Page's formulas (or against them) and the
expected verdict follows from the stated rule. The derived statistics are checked against
hand-computed values on synthetic metric rows.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent




page = importlib.import_module("experiments.page_weight_decay")
CELLS = [(0.9, lr, wd) for lr in (0.2, 0.4, 0.8) for wd in (2.5e-4, 5e-4, 1e-3)] + [
    (0.0, lr, wd) for lr in (0.5, 1.0, 2.0) for wd in (1e-3, 2e-3, 4e-3)]


def _run_rows(value_of, seeds=(0, 1, 2), layers=("Dense_0/kernel", "Dense_1/kernel")):
    """One run_layer row per cell, seed and hidden layer, fields from value_of(cell, seed)."""
    rows = []
    for rho, lr, wd in CELLS:
        for seed in seeds:
            for j, layer in enumerate(layers):
                r = {"kind": "run_layer", "rho": rho, "lr": lr, "wd": wd, "seed": seed,
                     "layer": layer, "scale_invariant": True}
                r.update(value_of((rho, lr, wd), seed, j))
                rows.append(r)
            # the head is not scale invariant: its values must not enter any verdict
            rows.append({"kind": "run_layer", "rho": rho, "lr": lr, "wd": wd, "seed": seed,
                         "layer": "head/kernel", "scale_invariant": False, "drift": 5.0,
                         "measured_rate": 1.0, "predicted_rate": 1e-3, "cos_gv_median": 0.9})
    return rows


def test_schedule_of_a_cell_is_twelve_relaxation_times():
    # Page's values: (1 - 0.9) / (2 * 0.4 * 5e-4) = 250 steps; 12 of them at batch 128 on
    # 60000 images (468 steps per epoch)
    assert page.relaxation_steps(0.4, 5e-4, 0.9) == pytest.approx(250.0)
    p = page.point("cpu", 0.9, 0.4, 5e-4, 1)
    assert round(p["epochs"] * (60000 // 128)) == 3000
    assert p["log_every_steps"] == 3000 // page.SAMPLES and p["seed"] == 1
    # the plain-SGD grid has the same lr*wd/(1-rho) cell by cell
    s = page.SETTINGS["cpu"]
    prods_m = sorted(lr * wd / 0.1 for lr in s["momentum"]["lr"] for wd in s["momentum"]["wd"])
    prods_p = sorted(lr * wd for lr in s["plain"]["lr"] for wd in s["plain"]["wd"])
    assert prods_m == pytest.approx(prods_p)
    # 18 cells x 3 seeds on the MLP, then the 3 ResNet-8 cells of the confirmation
    assert len(page.runs("cpu")) == 54 + 3 and len(page.runs("smoke")) == 1
    assert [p.get("model") for p in page.runs("cpu").values()][-3:] == ["resnet8"] * 3


def test_run_layer_rows_read_drift_rate_and_cos_from_metrics():
    # 120 logged steps of a run with rho 0.9, lr 0.4, wd 5e-4 (relaxation 250 steps):
    # window = steps > 4*250. Net change = +0.1 x shrink everywhere; |g|^2/|w|^2 chosen so
    # that lr/(1-rho)*|g|/|w| equals 1.5 x sqrt(2 lr wd/(1-rho)).
    rho, lr, wd = 0.9, 0.4, 5e-4
    pred = math.sqrt(2 * lr * wd / (1 - rho))
    g_over_w = 1.5 * pred * (1 - rho) / lr
    metrics = []
    for i in range(1, 121):
        shrink = 2.0 + 0.01 * i
        metrics.append({"kind": "train", "step": 25 * i - 3,
                        "diag/Dense_0/kernel/actual_dw_sqnorm": 0.1 * shrink,
                        "diag/Dense_0/kernel/wd_shrink": shrink,
                        "diag/Dense_0/kernel/g_sqnorm": g_over_w ** 2 * 4.0,
                        "diag/Dense_0/kernel/w_sqnorm": 4.0,
                        "diag/Dense_0/kernel/cos_g_v": 0.05 if i % 2 else -0.03,
                        "diag/Dense_0/kernel/cos_w_g": 0.0})
    metrics.append({"kind": "eval", "step": 3000, "test_accuracy": 0.8})
    row = {"status": "done", "varied": {"momentum": rho, "learning_rate": lr,
                                        "weight_decay": wd, "seed": 2},
           "summary": {"status": "ok", "test_accuracy": 0.8}}
    (r,) = page.run_layer_rows(row, metrics, "mlp2")
    assert r["scale_invariant"] and r["layer"] == "Dense_0/kernel" and r["seed"] == 2
    assert r["window_samples"] == 80  # steps 1022 .. 2997
    assert r["drift"] == pytest.approx(0.1)
    assert r["measured_rate"] / r["predicted_rate"] == pytest.approx(1.5)
    assert r["predicted_rate"] == pytest.approx(pred)
    assert r["cos_gv_median"] == pytest.approx(0.01)  # median of 40 x 0.05 and 40 x -0.03
    assert r["test_accuracy"] == 0.8
    assert not page._scale_invariant("mlp2", "diag/head/kernel")
    assert page._scale_invariant("resnet8", "B0/conv1/kernel")
    assert not page._scale_invariant("resnet8", "Dense_0/kernel")


def test_balance_supported_when_drift_is_small_and_contradicted_when_growth_wins():
    rng = np.random.default_rng(0)
    near = _run_rows(lambda c, s, j: {"drift": float(rng.normal(0, 0.03))})
    assert page.CRITERIA["a"](near)[0] == "supported"
    # growth exceeds shrink by ~60% in one cell (|w|^2 still rising): contradicted
    far = _run_rows(lambda c, s, j: {"drift": 0.6 + 0.02 * s if c == (0.9, 0.2, 2.5e-4)
                                     else float(rng.normal(0, 0.03))})
    verdict, lines = page.CRITERIA["a"](far)
    assert verdict == "contradicted"
    assert any("outside" in ln for ln in lines)
    # seeds that disagree (interval straddles the band edge): inconclusive
    wide = _run_rows(lambda c, s, j: {"drift": (0.0, 0.3, 0.5)[s]})
    assert page.CRITERIA["a"](wide)[0] == "inconclusive"


def test_rate_fit_recovers_slope_and_ratio_of_a_power_law():
    # y = 2 x^1 exactly: slope 1, ratio 2; y = x^0.5 * const: slope 0.5
    rows = _run_rows(lambda c, s, j: {
        "predicted_rate": math.sqrt(2 * c[1] * c[2] / (1 - c[0])),
        "measured_rate": 2 * math.sqrt(2 * c[1] * c[2] / (1 - c[0]))})
    fit = page.rate_fit(rows, 0.9)
    assert fit["slope"][0] == pytest.approx(1.0) and fit["ratio"][0] == pytest.approx(2.0)
    assert fit["cells"] == 9
    assert page.CRITERIA["b"](rows)[0] == "contradicted"  # ratio 2 is outside [0.8, 1.25]


def test_rate_supported_on_page_formula_and_contradicted_on_a_flat_rate():
    rng = np.random.default_rng(1)

    def page_like(c, s, j):
        x = math.sqrt(2 * c[1] * c[2] / (1 - c[0]))
        return {"predicted_rate": x, "measured_rate": x * float(np.exp(rng.normal(0, 0.03)))}

    assert page.CRITERIA["b"](_run_rows(page_like))[0] == "supported"

    def flat(c, s, j):  # a rate that ignores lr and wd: slope 0
        x = math.sqrt(2 * c[1] * c[2] / (1 - c[0]))
        return {"predicted_rate": x, "measured_rate": 0.03 * float(np.exp(rng.normal(0, 0.03)))}

    verdict, lines = page.CRITERIA["b"](_run_rows(flat))
    assert verdict == "contradicted"
    assert any("slope 0.0" in ln or "slope -0.0" in ln for ln in lines)


def _sqrt_n_rows(ratio_of_n, g2_of_n, full_g2, cos=0.95, ns=(1, 2, 4, 8, 16, 32)):
    rows = [{"kind": "full_batch", "layer": "Dense_0/kernel", "g_sqnorm": full_g2}]
    for n in ns:
        for d in range(4):
            jitter = 1 + 0.01 * (d - 1.5)
            rows.append({"kind": "sqrt_n", "n": n, "batch": 128 * n, "draw": d,
                         "layer": "Dense_0/kernel", "g_sqnorm": g2_of_n(n) * jitter,
                         "theta_small": 0.1 * ratio_of_n(n) * jitter, "theta_big": 0.1,
                         "direction_cos": cos})
    return rows


def test_sqrt_n_supported_by_noise_and_contradicted_by_coherent_steps():
    # |g_b|^2 = |G|^2 + tr(Sigma)/b with |G|^2 = 0.01, tr(Sigma)/B = 10: noise fraction
    # >= 0.96 up to n = 32, slope of log|g| vs log n close to -1/2; orthogonal small steps:
    # angle ratio 1 -> supported
    g2 = lambda n: 0.01 + 10.0 / n
    verdict, lines = page.CRITERIA["c"](_sqrt_n_rows(lambda n: 1.0, g2, 0.01))
    assert verdict == "supported", lines
    # the same gradients, but the n small steps add coherently (angle ratio sqrt(n)):
    # contradicted
    assert page.CRITERIA["c"](_sqrt_n_rows(math.sqrt, g2, 0.01))[0] == "contradicted"
    # directions disagree (cosine 0.3): contradicted
    assert page.CRITERIA["c"](_sqrt_n_rows(lambda n: 1.0, g2, 0.01, cos=0.3))[0] \
        == "contradicted"
    # signal dominated everywhere (|G|^2 = 9.5 of |g|^2 = 10): the premise is not met,
    # the verdict cannot be "supported"
    verdict, lines = page.CRITERIA["c"](_sqrt_n_rows(lambda n: 1.0, lambda n: 10.0, 9.5))
    assert verdict == "inconclusive"
    assert any("premise" in ln for ln in lines)


def test_sqrt_n_noise_fraction_and_slope_by_hand():
    g2 = lambda n: 0.01 + 10.0 / n
    table = page._sqrt_n_table(_sqrt_n_rows(lambda n: 1.0, g2, 0.01))
    # the draws' jitter averages to 1: noise fraction = 1 - 0.01 / g2(n)
    assert table[4]["noise_fraction"] == pytest.approx(1 - 0.01 / g2(4), rel=1e-9)
    # slope of log sqrt(g2) on log n over n = 1..32, by least squares
    ns = [1, 2, 4, 8, 16, 32]
    expected = np.polyfit(np.log(ns), 0.5 * np.log([g2(n) for n in ns]), 1)[0]
    assert page.g_slope(table, ns)[0] == pytest.approx(expected, rel=1e-6)


def test_cos_supported_near_zero_and_contradicted_when_gradients_correlate():
    rng = np.random.default_rng(2)
    near = _run_rows(lambda c, s, j: {"cos_gv_median": float(rng.normal(0.02, 0.01))})
    assert page.CRITERIA["d"](near)[0] == "supported"
    corr = _run_rows(lambda c, s, j: {"cos_gv_median": 0.45 + 0.01 * s})
    assert page.CRITERIA["d"](corr)[0] == "contradicted"
    # the momentum-0 runs carry no buffer: rows without the key are ignored
    plain_only = [r for r in near if r["rho"] == 0.0]
    assert page.CRITERIA["d"](plain_only)[0] == "inconclusive"


def test_every_rule_names_its_thresholds():
    for key, crit in page.CRITERIA.items():
        assert crit.claim and crit.rule, key
    assert str(page.DRIFT_BAND) in page.CRITERIA["a"].rule
    assert str(page.COS_BAND) in page.CRITERIA["d"].rule
    assert str(page.NOISE_DOMINATED) in page.CRITERIA["c"].rule


def test_confirmation_and_added_rows_do_not_enter_the_preset_verdicts():
    rng = np.random.default_rng(3)
    rows = _run_rows(lambda c, s, j: {"drift": float(rng.normal(0, 0.03)),
                                      "cos_gv_median": 0.01})
    # ResNet-8 rows (their own kind) that would contradict (a) and (d)
    conv = [dict(r, kind="run_layer_conv", drift=0.9, cos_gv_median=0.8) for r in rows]
    assert page.CRITERIA["a"](rows + conv)[0] == "supported"
    assert page.CRITERIA["d"](rows + conv)[0] == "supported"
    # an added (c) analysis is read only through its suffix
    added = [dict(r, kind=r["kind"] + "_small_base") for r in
             _sqrt_n_rows(math.sqrt, lambda n: 0.01 + 10.0 / n, 0.01)]
    assert page.CRITERIA["c"](added)[0] == "inconclusive"  # no rows of the pre-set kind
    assert page.CRITERIA["c"](page._suffix_rows(added, "_small_base"))[0] == "contradicted"
