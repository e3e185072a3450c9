"""Tests of experiments/evidence.py against hand computations and textbook values."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import evidence as ev  # noqa: E402


def test_interval_matches_hand_computed_t_interval():
    # diffs 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t_{0.975, df=2} = 4.302653 (t table)
    d = ev.interval([1.0, 2.0, 3.0])
    se = 1 / math.sqrt(3)
    assert d.mean == pytest.approx(2.0)
    assert d.se == pytest.approx(se)
    assert d.lo == pytest.approx(2 - 4.302653 * se, rel=1e-6)
    assert d.hi == pytest.approx(2 + 4.302653 * se, rel=1e-6)
    # t = 2 / (1/sqrt 3) = 3.4641, two-sided p with 2 df = 0.07418 (t table / closed form
    # for df=2: p = 1 - t / sqrt(t^2 + 2))
    t = 2 / se
    assert d.p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-6)
    assert d.positive == 3 and d.n == 3


def test_paired_uses_only_complete_pairs_and_is_a_minus_b():
    a = {0: 0.9, 1: 0.8, 2: float("nan"), 3: 0.7}
    b = {0: 0.85, 1: 0.82, 2: 0.5}
    d = ev.paired(a, b)
    assert d.n == 2
    assert d.mean == pytest.approx(((0.9 - 0.85) + (0.8 - 0.82)) / 2)


def test_within_noise_only_when_interval_includes_zero():
    assert ev.describe_difference(ev.interval([0.01, -0.02, 0.015])) == "within noise"
    assert ev.describe_difference(ev.interval([0.05, 0.06, 0.055])) == "higher"
    assert ev.describe_difference(ev.interval([-0.05, -0.06, -0.055])) == "lower"
    tight = ev.interval([0.001, 0.0012, 0.0011])
    assert ev.describe_difference(tight, margin=0.01) == "within margin"
    assert ev.describe_difference(ev.interval([0.05])) == "within noise"  # one pair: undefined
    assert ev.describe_difference(ev.interval([])) == "no data"


def test_best_on_grid_edges_and_extension():
    assert ev.best_on_grid({0.1: 0.8, 0.2: 0.9, 0.4: 0.85}) == (0.2, None)
    assert ev.best_on_grid({0.1: 0.9, 0.2: 0.8}) == (0.1, "low")
    assert ev.best_on_grid({0.1: 0.7, 0.2: float("nan"), 0.4: 0.8}) == (0.4, "high")
    assert ev.best_on_grid({0.1: float("nan")}) == (None, None)
    assert ev.next_grid_point({0.1: 0.9, 0.2: 0.8}) == pytest.approx(0.05)
    assert ev.next_grid_point({0.1: 0.7, 0.2: 0.8}) == pytest.approx(0.4)
    assert ev.next_grid_point({0.1: 0.7, 0.2: 0.8, 0.4: 0.75}) is None
    assert ev.next_grid_point({0.1: 0.7, 0.2: 0.8}, bounds=(0, 0.3)) is None


def test_bootstrap_interval_of_mean_covers_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 1.0, 10)
    large = rng.normal(1.0, 1.0, 400)
    est_s, lo_s, hi_s = ev.bootstrap_interval(np.mean, small, n_boot=500)
    est_l, lo_l, hi_l = ev.bootstrap_interval(np.mean, large, n_boot=500)
    assert lo_s <= est_s <= hi_s and lo_l <= est_l <= hi_l
    # the width of a mean's interval scales like 1/sqrt(n): 40x the data, ~1/6.3 the width
    ratio = (hi_l - lo_l) / (hi_s - lo_s)
    assert 0.08 < ratio < 0.3


def test_criterion_can_say_supported_and_contradicted_and_rejects_other_words():
    def decide(rows):
        d = ev.paired({r["seed"]: r["a"] for r in rows}, {r["seed"]: r["b"] for r in rows})
        word = ev.describe_difference(d)
        return ("supported" if word == "higher" else "contradicted"), [d.fmt(100)]

    crit = ev.Criterion("A beats B.", "supported if A - B > 0 with 95% confidence", decide)
    better = [{"seed": s, "a": 0.9 + 0.001 * s, "b": 0.8} for s in range(3)]
    worse = [{"seed": s, "a": 0.7 + 0.001 * s, "b": 0.8} for s in range(3)]
    assert crit(better)[0] == "supported"
    assert crit(worse)[0] == "contradicted"
    assert "Verdict (computed from the rows): supported" in crit.section(better)
    with pytest.raises(ValueError, match="verdict must be one of"):
        ev.Criterion("x", "y", lambda rows: ("maybe", []))([])
