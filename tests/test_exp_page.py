"""Verdicts of experiment 3 (Page, design v3) on synthetic rows that support and that
contradict.

Each decide function of ``experiments/page_weight_decay.py`` must be able to say
"supported" and "contradicted": rows are built by hand from Page's formulas (or against
them) and the expected verdict follows from the stated rule (issue 23: holds / fails only
when the whole 95% interval over 4 evaluation seeds is inside / beyond the band).
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

page = importlib.import_module("experiments.page_weight_decay")
CELLS = page.SETTINGS["cpu"]["cells"]
SEEDS = (0, 1, 2, 3)
LAYERS = ("Dense_0/kernel", "Dense_1/kernel")


def _branch(tau: float, tau_page: float, start: float, end: float = 100.0) -> list[list[float]]:
    t = np.linspace(0.0, page.RELAX_TAUS * tau_page, page.RELAX_SAMPLES + 1)
    return [[float(a), float(end + (start - end) * math.exp(-a / tau))] for a in t]


def _mlp_rows(tau_of=lambda c, s: 1.0, rate_of=lambda c, s: 1.0, cos_of=lambda c, s: 0.0,
              scored: bool = True) -> list[dict]:
    """One MLP row per cell and seed: relaxation branches with time constant
    tau_of(cell, seed) x tau_Page, measured rate rate_of(...) x Page's, cos cos_of(...)."""
    rows = []
    for rho, lr, wd in CELLS:
        tp = page.relaxation_steps(lr, wd, rho)
        pred = math.sqrt(2 * lr * wd / (1 - rho))
        for s in SEEDS:
            c = (rho, lr, wd)
            tau = tau_of(c, s) * tp
            layers = [{"layer": k, "scale_invariant": True, "predicted_rate": pred,
                       "measured_rate": pred * rate_of(c, s), "cos_gv_median": cos_of(c, s)}
                      for k in LAYERS]
            # the head is not scale invariant: its values never enter a verdict
            layers.append({"layer": "head/kernel", "scale_invariant": False,
                           "predicted_rate": pred, "measured_rate": 50 * pred,
                           "cos_gv_median": 0.9})
            rows.append({"arm": "mlp", "rho": rho, "lr": lr, "wd": wd, "seed": s,
                         "tau_page": tp, "scored": scored, "layers": layers,
                         "relax": {"up": {k: _branch(tau, tp, 200.0) for k in LAYERS},
                                   "down": {k: _branch(tau, tp, 50.0) for k in LAYERS}}})
    return rows


def test_every_scored_run_has_200_steps_and_the_plan_order():
    from lars_jax.train import TrainConfig

    # Page's cell: (1 - 0.9) / (2 * 0.4 * 5e-4) = 250 steps; 6 of them = 1500 steps
    assert page.relaxation_steps(0.4, 5e-4, 0.9) == pytest.approx(250.0)
    base = page.base_config("cpu")
    pts = page.plan("cpu", [])
    steps = [TrainConfig(**{**base.__dict__, **p}).run_steps(60000)[1] for p in pts]
    assert min(steps) >= 200
    assert steps[-len(CELLS) * len(SEEDS)] == 1500  # the first MLP cell is Page's
    # before any run: 3 ResNet-8 selection runs (seed 100), then 4 (c) runs, then 32 MLP
    assert [p["seed"] for p in pts[:3]] == [100] * 3 and len(pts) == 3 + 4 + 32
    assert all(p["model"] == "resnet8" and p["weight_decay"] * p["learning_rate"]
               == pytest.approx(8e-4) for p in pts[:3])
    assert all(p["batch_size"] == 16 and p["momentum"] == 0.0 for p in pts[3:7])
    # the plain-SGD cells have the momentum cells' lr wd / (1 - rho), one for one
    m = sorted(lr * wd / (1 - rho) for rho, lr, wd in CELLS if rho)
    p = sorted(lr * wd for rho, lr, wd in CELLS if not rho)
    assert m == pytest.approx(p)
    with pytest.raises(ValueError, match="preset"):
        page.base_config("full")


def test_fit_relaxation_recovers_a_known_time_constant():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1000, 81)
    x = 100 + 300 * np.exp(-t / 180.0) + rng.normal(0, 1.0, t.size)
    assert page.fit_relaxation(t, x, 250.0) == pytest.approx(180.0, rel=0.03)
    # growth from below, tau 60
    x = 100 - 75 * np.exp(-t / 60.0)
    assert page.fit_relaxation(t, x, 250.0) == pytest.approx(60.0, rel=1e-3)
    # a branch that hardly moves (5% of the equilibrium) has nothing to fit
    assert math.isnan(page.fit_relaxation(t, 100 + 5 * np.exp(-t / 60.0), 250.0))


def test_ode_reference_brackets_the_linear_response_time():
    # |w|^4 relaxes with tau_Page/2 exactly (linear response of |w|^2: tau_Page/2 too).
    # From above, |w|^2 starts decaying at the slower rate 1/tau_Page: the fit lies between
    # tau_Page/2 and tau_Page. From below the growth term ~ 1/|w|^2 is larger than at
    # equilibrium: faster than the linear response, below tau_Page/2. The criterion text
    # quotes the two values.
    up, down = page.ode_reference(2.0), page.ode_reference(0.5)
    assert 0.5 < up < 1.0 and 0.3 < down < 0.5
    assert f"{up:.2f} (up) and {down:.2f}" in page.CRITERIA["a"].rule
    # small perturbations on either side approach the linear response, tau_Page/2
    assert page.ode_reference(1.4) == pytest.approx(0.5, abs=0.06)
    assert page.ode_reference(1 / 1.4) == pytest.approx(0.5, abs=0.06)


def test_relaxation_supported_at_page_time_and_contradicted_at_four_times_it():
    assert page.CRITERIA["a"](_mlp_rows())[0] == "supported"
    verdict, lines = page.CRITERIA["a"](_mlp_rows(tau_of=lambda c, s: 4.0))
    assert verdict == "contradicted" and any("fails" in ln for ln in lines)
    # a relaxation time that ignores lr and wd (constant 200 steps): slope 0, fails
    const = _mlp_rows(tau_of=lambda c, s: 200.0 / page.relaxation_steps(c[1], c[2], c[0]))
    assert page.CRITERIA["a"](const)[0] == "contradicted"
    # seeds that disagree across the band edge (ratio 1.5 .. 3): inconclusive
    wide = _mlp_rows(tau_of=lambda c, s: (1.5, 3.0, 1.5, 3.0)[s])
    assert page.CRITERIA["a"](wide)[0] == "inconclusive"
    # rows not scored (budget-bound, selection seed) never count
    assert page.CRITERIA["a"](_mlp_rows(scored=False))[0] == "inconclusive"


def test_rate_supported_on_page_formula_and_contradicted_off_it():
    rng = np.random.default_rng(1)
    near = _mlp_rows(rate_of=lambda c, s: float(np.exp(rng.normal(0, 0.01))))
    assert page.CRITERIA["b"](near)[0] == "supported"
    verdict, lines = page.CRITERIA["b"](_mlp_rows(rate_of=lambda c, s: 1.5))
    assert verdict == "contradicted" and any("measured / predicted 1.500" in ln for ln in lines)
    # a rate that ignores lr and wd: slope 0
    flat = _mlp_rows(rate_of=lambda c, s: 0.05 / math.sqrt(2 * c[1] * c[2] / (1 - c[0])))
    assert page.CRITERIA["b"](flat)[0] == "contradicted"


def _conv_rows(scores: dict[float, float], ratio: float | None = None, best: float = 0.2
               ) -> list[dict]:
    rows = [{"arm": "conv", "rho": 0.9, "lr": lr, "wd": 8e-4 / lr, "seed": 100,
             "test_accuracy": a, "scored": False} for lr, a in scores.items()]
    if ratio is not None:
        pred = math.sqrt(2 * 8e-4 / 0.1)
        rows += [{"arm": "conv", "rho": 0.9, "lr": best, "wd": 8e-4 / best, "seed": s,
                  "scored": True, "layers": [
                      {"layer": f"conv{j}/kernel", "scale_invariant": True,
                       "predicted_rate": pred, "measured_rate": pred * ratio * (1 + 0.01 * s)}
                      for j in range(3)]} for s in SEEDS]
    return rows


def test_conv_selection_extends_an_edge_and_refuses_an_edge_after_it():
    # best at the high edge 0.4: the plan asks for the extension 0.8, no evaluation yet
    rows = _conv_rows({0.1: 0.5, 0.2: 0.6, 0.4: 0.7})
    sel = page.conv_selection(rows)
    assert sel["extension"] == 0.8 and not sel["done"]
    assert [p["learning_rate"] for p in page.plan("cpu", rows)[:4]] == [0.1, 0.2, 0.4, 0.8]
    # still best at 0.8: edge, nothing scored, no evaluation runs planned
    rows = _conv_rows({0.1: 0.5, 0.2: 0.6, 0.4: 0.7, 0.8: 0.75})
    verdict, lines = page.decide_conv_rate(rows)
    assert verdict == "inconclusive" and any("edge" in ln for ln in lines)
    assert all(p["seed"] == 100 for p in page.plan("cpu", rows) if p["model"] == "resnet8")
    # interior best 0.2: 4 evaluation runs there
    rows = _conv_rows({0.1: 0.5, 0.2: 0.7, 0.4: 0.6})
    evals = [p for p in page.plan("cpu", rows) if p["model"] == "resnet8" and p["seed"] != 100]
    assert [p["seed"] for p in evals] == list(SEEDS)
    assert {p["learning_rate"] for p in evals} == {0.2}


def test_conv_rate_both_ways():
    sel = {0.1: 0.5, 0.2: 0.7, 0.4: 0.6}
    assert page.decide_conv_rate(_conv_rows(sel, ratio=1.0))[0] == "supported"
    # the v2 ResNet-8 value, 1.35: wholly above 1.25
    assert page.decide_conv_rate(_conv_rows(sel, ratio=1.35))[0] == "contradicted"


def _c_rows(ratio_of, g2_of, full_g2, cos=0.95, ns=(1, 2, 4, 8, 16)) -> list[dict]:
    rows = []
    for s in SEEDS:
        draws = []
        for n in ns:
            for d in range(4):
                jitter = 1 + 0.01 * (d - 1.5) + 0.005 * s
                draws.append({"n": n, "draw": d, "layer": "Dense_0/kernel",
                              "g_sqnorm": g2_of(n) * jitter, "theta_big": 0.1,
                              "theta_small": 0.1 * ratio_of(n) * jitter,
                              "direction_cos": cos})
        rows.append({"arm": "c", "seed": s, "scored": True, "batch": 16,
                     "sqrt_n": {"full": {"Dense_0/kernel": full_g2}, "draws": draws}})
    return rows


def test_sqrt_n_supported_by_noise_and_contradicted_by_coherent_steps():
    # |g_b|^2 = |G|^2 + tr(Sigma)/b, |G|^2 = 0.01 and tr(Sigma)/B = 10: noise fraction
    # >= 0.99 up to n = 16, log|g| on log n close to -1/2; orthogonal small steps: ratio 1
    g2 = lambda n: 0.01 + 10.0 / n
    verdict, lines = page.CRITERIA["c"](_c_rows(lambda n: 1.0, g2, 0.01))
    assert verdict == "supported", lines
    assert page.CRITERIA["c"](_c_rows(math.sqrt, g2, 0.01))[0] == "contradicted"
    assert page.CRITERIA["c"](_c_rows(lambda n: 1.0, g2, 0.01, cos=0.3))[0] == "contradicted"
    # signal dominated (|G|^2 = 9.5 of 10): the premise is not met
    verdict, lines = page.CRITERIA["c"](_c_rows(lambda n: 1.0, lambda n: 10.0, 9.5))
    assert verdict == "inconclusive" and any("premise is not met" in ln for ln in lines)


def test_sqrt_n_seed_table_by_hand():
    g2 = lambda n: 0.01 + 10.0 / n
    (row,) = _c_rows(lambda n: 1.0, g2, 0.01)[:1]
    tab = page.sqrt_n_seed_table(row["sqrt_n"])
    # seed 0: the draws' jitter averages to 1, so E|g|^2 = g2(n)
    assert tab[4]["noise_fraction"] == pytest.approx(1 - 0.01 / g2(4), rel=1e-9)
    assert tab[4]["g_rms"] == pytest.approx(math.sqrt(g2(4)), rel=1e-9)
    assert tab[4]["ratio"] == pytest.approx(1.0, rel=1e-9)


def test_cos_supported_near_zero_and_contradicted_when_gradients_correlate():
    rng = np.random.default_rng(2)
    near = _mlp_rows(cos_of=lambda c, s: float(rng.normal(0.02, 0.005)))
    assert page.CRITERIA["d"](near)[0] == "supported"
    assert page.CRITERIA["d"](_mlp_rows(cos_of=lambda c, s: 0.45 + 0.01 * s))[0] \
        == "contradicted"
    plain_only = [r for r in near if r["rho"] == 0.0]  # momentum 0 has no buffer
    assert page.CRITERIA["d"](plain_only)[0] == "inconclusive"


def test_every_rule_names_its_thresholds_and_the_spec_hashes_the_decide_code():
    for key, crit in page.CRITERIA.items():
        assert crit.claim and crit.rule, key
    assert f"[{page.TAU_BAND[0]:g}, {page.TAU_BAND[1]:g}]" in page.CRITERIA["a"].rule
    assert f"{page.NOISE_DOMINATED:g}" in page.CRITERIA["c"].rule
    spec = page.registered("cpu", page.base_config("cpu")).spec
    assert "def decide_relax" in spec["decide_source"]
    assert "def fit_relaxation" in spec["decide_source"]
    assert spec["seeds"] == {"selection": 100, "evaluation": [0, 1, 2, 3]}
