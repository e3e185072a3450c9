"""Experiment 5 (McCandlish critical batch): the S(B) fit recovers known parameters, and
the pre-set criterion decides both ways on synthetic rows built from the model."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import evidence as ev  # noqa: E402

ns = importlib.import_module("experiments.gradient_noise_scale")
BATCHES = [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def test_fit_recovers_the_model_and_flags_unlocated_bends():
    # exact data from S = 300 (1 + 700/B)
    s_min, b_noise = ev.fit_steps_to_target(BATCHES, [300 * (1 + 700 / b) for b in BATCHES])
    assert s_min == pytest.approx(300, rel=1e-3) and b_noise == pytest.approx(700, rel=1e-3)
    # perfect scaling throughout (S = 1e6 / B): the bend is beyond the data
    assert ev.fit_steps_to_target(BATCHES, [1e6 / b for b in BATCHES])[1] == math.inf
    # steps that do not fall with B: B_noise at the bottom of the range
    assert ev.fit_steps_to_target(BATCHES, [500.0] * len(BATCHES))[1] == 0.0
    assert math.isnan(ev.fit_steps_to_target([64, 64], [10, 12])[1])
    with pytest.raises(ValueError, match="positive"):
        ev.fit_steps_to_target([64, 128], [10, 0])


def _rows(b_noise_of_target, b_simple, batches=BATCHES, noise=0.05, seed=0):
    """Steps from S = S_min (1 + B_noise/B) with 5% multiplicative noise (fixed rng), and
    two seeds of B_simple per target."""
    rng = np.random.default_rng(seed)
    rows = []
    for t, bn in b_noise_of_target.items():
        for b in batches:
            s = 200 / t * (1 + bn / b) * math.exp(noise * rng.standard_normal())
            rows.append({"kind": "steps", "target": t, "batch_size": b, "steps": round(s)})
        rows += [{"kind": "b_simple", "target": t, "seed": k, "b_simple": b_simple * f}
                 for k, f in ((0, 0.9), (1, 1.1))]
    return rows


TRUE = {0.14: 300.0, 0.13: 400.0, 0.12: 500.0}


def test_supported_when_b_simple_matches_b_crit():
    v, details = ns.NOISE_SCALE(_rows(TRUE, b_simple=450))
    assert v == "supported", details
    f = ns.fit_target(_rows(TRUE, b_simple=450), 0.12)
    assert f["lo"] <= 500 <= f["hi"] and f["hi"] / f["lo"] < ns.MAX_WIDTH


def test_contradicted_when_b_simple_is_far_off():
    # 20x above the true B_crit at every target: outside a factor 3 of any sane interval
    v, details = ns.NOISE_SCALE(_rows(TRUE, b_simple=9000))
    assert v == "contradicted", details
    v, _ = ns.NOISE_SCALE(_rows(TRUE, b_simple=15))
    assert v == "contradicted"


def test_inconclusive_without_enough_batches_or_a_located_bend():
    assert ns.NOISE_SCALE(_rows(TRUE, 450, batches=[256, 512, 1024]))[0] == "inconclusive"
    # perfect scaling over the whole range: B_crit beyond the data, interval not finite
    far = {t: 1e7 for t in TRUE}
    v, details = ns.NOISE_SCALE(_rows(far, 450))
    assert v == "inconclusive", details
    # batches that never reach a target are left out of its fit
    rows = _rows(TRUE, 450)
    for r in rows:
        if r["kind"] == "steps" and r["batch_size"] >= 512:
            r["steps"] = None
    assert len(ns.fit_target(rows, 0.12)["points"]) == 4


def test_steps_rows_take_the_fewest_steps_over_lrs_of_seed_0():
    def r(b, lr, seed, s):
        return {"optimizer": "sgd", "batch_size": b, "learning_rate": lr, "seed": seed,
                "steps_to_error": {f"{t:g}": s for t in ns.TARGET_ERRORS}}

    rows = ns.steps_rows([r(128, 0.05, 0, 900), r(128, 0.1, 0, 700), r(128, 0.1, 1, 100),
                          r(256, 0.05, 0, None)], [r(32, 0.05, 0, 3000)])
    got = {(x["target"], x["batch_size"]): x["steps"] for x in rows}
    assert got[(0.12, 128)] == 700 and got[(0.12, 32)] == 3000 and got[(0.12, 256)] is None


@pytest.mark.slow
def test_smoke_run_and_report(tmp_path, monkeypatch):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST files not available")
    monkeypatch.setenv("LARS_JAX_CACHE", str(tmp_path / "xla"))
    out = tmp_path / "exp5"
    summary = ns.main(["--preset", "smoke", "--out", str(out), "--exp1",
                       str(tmp_path / "missing")])
    assert summary["verdict"] == "inconclusive"  # no steps data without experiment 1
    report = (out / "report.md").read_text()
    assert "Criterion (fixed before the run)" in report and (out / "b_simple.png").exists()
    assert summary["b_simple"] and all(r["kind"] == "b_simple" for r in summary["b_simple"])
