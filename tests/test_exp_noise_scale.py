"""Experiment 5 v3 (McCandlish critical batch): the S(B) fit recovers known parameters, and
the pre-set criterion decides both ways on synthetic rows built from the model; batches
beyond the data are "extrapolated", censored caps and edge lrs decide nothing."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from experiments import evidence as ev
from experiments import harness

ns = importlib.import_module("experiments.gradient_noise_scale")
BATCHES = [128, 512, 1024, 2048, 4096, 8192]
SEL = ns.SELECTION_SEED
HARDER = dict(zip(ns.TARGET_ERRORS, (1.0, 1.2, 1.5), strict=True))  # steps vs the 14% target


def test_fit_recovers_the_model_and_flags_unlocated_bends():
    s_min, b_noise = ev.fit_steps_to_target(BATCHES, [300 * (1 + 700 / b) for b in BATCHES])
    assert s_min == pytest.approx(300, rel=1e-3) and b_noise == pytest.approx(700, rel=1e-3)
    assert ev.fit_steps_to_target(BATCHES, [1e6 / b for b in BATCHES])[1] == math.inf
    assert ev.fit_steps_to_target(BATCHES, [500.0] * len(BATCHES))[1] == 0.0


def _rows(b_crit, b_simple, batches=BATCHES, noise=0.03, s_min=40.0, cap=None, seed=0):
    """Selection rows (3 lrs, middle best) and 2 evaluation seeds per batch with steps from
    S = S_min (1 + B_crit/B) x (1 +- 3%), the harder targets 1.2x and 1.5x the steps; two
    noise runs with B_simple (0.9x and 1.1x) at every target."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in batches:
        c = ns.centre_lr(b)
        for f in (0.5, 1.0, 2.0):
            s = s_min * (1 + b_crit / b) * (1.0 if f == 1.0 else 1.5)
            rows.append({"seed": SEL, "learning_rate": c * f, "steps_to_error": {
                f"{t:g}": round(s * k) for t, k in HARDER.items()}})
        for seed_ in (0, 1):
            s = s_min * (1 + b_crit / b) * math.exp(noise * rng.standard_normal())
            rows.append({"seed": seed_, "learning_rate": c, "steps_to_error": {
                f"{t:g}": round(s * k) for t, k in HARDER.items()}})
        for r in rows[-5:]:
            r.update(kind="steps", batch_size=b, budget_exempt=True, bn_examples=32,
                     outcome="ok", cap_steps=cap or 10 * round(s_min * (1 + b_crit / b)),
                     total_steps=50, role="selection" if r["seed"] == SEL else "evaluation")
    rows += [{"kind": "noise", "seed": k, "batch_size": 128, "total_steps": 2000,
              "budget_exempt": False, "bn_examples": 32, "b_simple_at": {
                  f"{t:g}": b_simple * f for t in ns.TARGET_ERRORS}}
             for k, f in ((0, 0.9), (1, 1.1))]
    for r in rows:
        r["scored"], r["why_not"] = harness.score_row(r, selection_seeds=(SEL,))
    return rows


def test_supported_when_b_simple_matches_b_crit():
    rows = _rows(2000, 2000)
    v, details = ns.NOISE_SCALE(rows)
    assert v == "supported", details
    f = ns.fit_target(rows, 0.12)
    assert f["b_crit_lo"] <= 2000 <= f["b_crit_hi"] and f["ratio_lo"] <= 1 <= f["ratio_hi"]
    assert f["e_min"] == pytest.approx(f["s_min"] * f["b_crit"])
    assert f["s_min"] == pytest.approx(40 * 1.5, rel=0.1)  # the 12% target takes 1.5x


def test_contradicted_when_b_simple_is_far_off():
    v, details = ns.NOISE_SCALE(_rows(2000, 100))  # ratio ~20: wholly beyond 3
    assert v == "contradicted", details
    assert sum("**fails**" in d for d in details) == 3


def test_b_crit_beyond_the_measured_batches_is_extrapolated():
    v, details = ns.NOISE_SCALE(_rows(60000, 60000))
    assert v == "inconclusive" and all("extrapolated" in d for d in details), details


def test_censored_caps_and_edge_lrs_decide_nothing():
    rows = _rows(2000, 2000)
    for r in rows:  # the top batch never reached a target within a cap of 30 steps
        if r.get("batch_size") == 8192 and r["seed"] != SEL:
            r["steps_to_error"] = dict.fromkeys(r["steps_to_error"])
            r["cap_steps"] = 30
    v, details = ns.NOISE_SCALE(rows)
    assert v == "inconclusive" and all("censored" in d for d in details), details
    # the same batch on an lr edge is left out instead (and the rest still decide)
    rows = _rows(2000, 2000)
    for r in rows:
        if r.get("batch_size") == 8192 and r["seed"] == SEL and r["learning_rate"] < 0.5:
            r["steps_to_error"] = {k: 5 for k in r["steps_to_error"]}
    assert ns.edge_batches(rows) == [8192]
    assert "8192" not in ns.fit_target(rows, 0.12)["points"]


def test_selection_rows_never_enter_the_fit():
    rows = _rows(2000, 2000)
    for r in rows:  # the selection seed reaches every target in 1-2 steps, middle lr best
        if r["seed"] == SEL and r.get("kind") == "steps":
            one = math.isclose(r["learning_rate"], ns.centre_lr(r["batch_size"]))
            r["steps_to_error"] = dict.fromkeys(r["steps_to_error"], 1 if one else 2)
    pts, _ = ns._points(rows, 0.12)
    assert sorted(pts) == BATCHES and all(len(v) == 2 and min(v) > 2 for v in pts.values())


def test_select_score_prefers_harder_targets_then_fewer_steps():
    def r(**st):
        return {"outcome": "ok", "steps_to_error": {"0.14": st.get("a"), "0.13": st.get("b"),
                                                    "0.12": st.get("c")}}
    assert ns.select_score(r(a=10, b=20, c=900)) > ns.select_score(r(a=5, b=6))
    assert ns.select_score(r(a=10, b=20, c=300)) > ns.select_score(r(a=10, b=20, c=400))
    assert math.isnan(ns.select_score({"outcome": "diverged"}))


def test_caps_exceed_three_prior_s_min_and_200_steps():
    for b in BATCHES:
        assert ns.cap_steps("cpu", b) >= max(200, 3 * ns.PRIOR[0])
        assert ns.cap_steps("cpu", b) >= 2 * ns.prior_steps(b)


@pytest.mark.slow
def test_smoke_run_registers_stamps_resumes_and_refuses(tmp_path, monkeypatch):
    """End to end (3 tiny runs): criterion.json before the rows, every row stamped, a
    second invocation trains nothing, a row of another sha makes the report refuse.

    The smoke preset's batch sizes are cut to the first: one noise run, one selection run
    and one evaluation run exercise every step of the protocol (a second batch size only
    repeats them; each run compiles its own programs)."""
    import json
    from pathlib import Path

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST files not available")
    monkeypatch.setenv("LARS_JAX_CACHE", str(tmp_path / "xla"))
    monkeypatch.setitem(ns.BATCHES, "smoke", ns.BATCHES["smoke"][:1])
    out = tmp_path / "exp5"
    argv = ["--preset", "smoke", "--out", str(out)]
    summary = ns.main(argv)
    crit = json.loads((out / "criterion.json").read_text())
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and summary["criterion_sha"] == crit["criterion_sha"]
    assert all(set(harness.ROW_FIELDS) <= set(r) and r["criterion_sha"] == crit["criterion_sha"]
               and r["finished_at"] >= crit["fixed_at"] and "bn_examples" in r for r in rows)
    assert {r["why_not"] for r in rows if not r["scored"]} >= {"lr-selection seed 100"}
    report = (out / "report.md").read_text()
    assert crit["criterion_sha"][:16] in report and crit["fixed_at"] in report
    ns.main(argv)  # resumes: nothing retrained
    assert len((out / "rows.jsonl").read_text().splitlines()) == 3
    rows[0]["criterion_sha"] = "0" * 64
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(harness.CriterionMismatch, match="refusing to score"):
        ns.main([*argv, "--report-only"])
