"""Experiment 2 v3 (CLARS without warmup, Huo et al.): the pre-set criterion decides both
ways on synthetic rows (no training). The regime search takes the first candidate lr whose
selection-seed gap reaches 2 points; the claim is decided on the 4 evaluation seeds by the
interval/margin rule; the selection seed never enters a paired difference. Expected
verdicts and differences are worked out by hand from the rule as written."""

from __future__ import annotations

import importlib
import math

from experiments import harness

exp = importlib.import_module("experiments.clars_no_warmup")
SEL = exp.SELECTION_SEED
REG = exp.REGIMES["cpu"]
JITTER = {0: 0.001, 1: -0.001, 2: 0.0005, 3: -0.0005}


def _row(method: str, lr: float, seed: int, acc: float | None, steps: int = 203) -> dict:
    r = {"method": method, "learning_rate": lr, "seed": seed, "test_accuracy": acc,
         "total_steps": steps, "budget_exempt": False, "bn_examples": 16}
    r["scored"], r["why_not"] = harness.score_row(r, selection_seeds=(SEL,))
    return r


def _search(gaps: list[float], wu: float = 0.85) -> list[dict]:
    """Selection-seed LARS pairs at the first len(gaps) candidates: without warmup
    ``gap`` points below with warmup."""
    rows = []
    for lr, g in zip(REG, gaps, strict=False):
        rows += [_row(exp.LARS_WU, lr, SEL, wu), _row(exp.LARS_NW, lr, SEL, wu - g / 100)]
    return rows


def _claim(lr: float, means: dict[str, float], spread: float = 1.0) -> list[dict]:
    """4 evaluation seeds per method at ``lr``; seed s is off the mean by spread x JITTER."""
    return [_row(m, lr, s, a + spread * JITTER[s]) for m, a in means.items()
            for s in (0, 1, 2, 3)]


def test_search_takes_the_first_candidate_with_a_two_point_gap():
    lr, seen = exp.search(_search([0.5, 1.9, 2.5, 8.0]), REG)
    assert lr == REG[2]
    assert [round(g, 6) for _, g in seen] == [0.5, 1.9, 2.5]
    # a diverged run (accuracy None) counts as chance: 0.85 - 0.10 = 75 points
    rows = [_row(exp.LARS_WU, REG[0], SEL, 0.85), _row(exp.LARS_NW, REG[0], SEL, None)]
    assert exp.search(rows, REG) == (REG[0], [(REG[0], 75.0)])
    # an unfinished candidate stops the search
    lr, seen = exp.search(_search([0.5]), REG)
    assert lr is None and seen[1] == (REG[1], None) and math.isclose(seen[0][1], 0.5)


def test_no_regime_is_inconclusive_and_says_so():
    v, details = exp.decide_claim(_search([0.1] * len(REG)), REG)
    assert v == "inconclusive"
    assert any("No regime" in d for d in details)


def test_supported_when_clars_stays_within_a_point_of_lars_with_warmup():
    lr = REG[1]
    rows = _search([1.0, 5.0]) + _claim(lr, {exp.LARS_WU: 0.86, exp.LARS_NW: 0.80,
                                             exp.CLARS_NW: 0.858})
    # CLARS - LARS_WU = -0.2 points at every seed (same jitter): interval [-0.2, -0.2]
    v, details = exp.decide_claim(rows, REG)
    assert v == "supported", details


def test_contradicted_when_clars_is_wholly_more_than_a_point_below():
    lr = REG[1]
    rows = _search([1.0, 5.0]) + _claim(lr, {exp.LARS_WU: 0.86, exp.LARS_NW: 0.80,
                                             exp.CLARS_NW: 0.83})
    rows = [r if r["method"] != exp.CLARS_NW else {**r, "test_accuracy": r["test_accuracy"]
                                                    + 0.002 * (r["seed"] % 2)}
            for r in rows]
    # CLARS - LARS_WU = -3.0, -2.8, -3.0, -2.8 points: mean -2.9, whole interval below -1
    v, details = exp.decide_claim(rows, REG)
    assert v == "contradicted", details


def test_an_interval_across_the_margin_is_undecided():
    lr = REG[1]
    rows = _search([1.0, 5.0]) + _claim(lr, {exp.LARS_WU: 0.86, exp.LARS_NW: 0.80})
    # CLARS - LARS_WU per seed: -3, +1, -2, 0 points: mean -1, se 0.91, interval ~[-3.9, 1.9]
    rows += [_row(exp.CLARS_NW, lr, s, 0.86 + JITTER[s] + d / 100)
             for s, d in zip((0, 1, 2, 3), (-3.0, 1.0, -2.0, 0.0), strict=True)]
    assert exp.decide_claim(rows, REG)[0] == "inconclusive"


def test_warmup_problem_not_confirmed_on_evaluation_seeds_is_inconclusive():
    lr = REG[0]
    # selected on a 3-point selection-seed gap, but on the evaluation seeds the methods tie
    rows = _search([3.0]) + _claim(lr, {exp.LARS_WU: 0.86, exp.LARS_NW: 0.86,
                                        exp.CLARS_NW: 0.86})
    v, details = exp.decide_claim(rows, REG)
    assert v == "inconclusive"
    assert any("not confirmed" in d for d in details)


def test_selection_seed_and_budget_bound_rows_never_enter_the_comparison():
    lr = REG[1]
    rows = _search([1.0, 5.0]) + _claim(lr, {exp.LARS_WU: 0.86, exp.LARS_NW: 0.80,
                                             exp.CLARS_NW: 0.858})
    # a selection-seed CLARS run at the fixed lr and a budget-bound evaluation run, both
    # disastrous: neither is scored, so the verdict stays supported
    rows += [_row(exp.CLARS_NW, lr, SEL, 0.10), _row(exp.CLARS_NW, lr, 7, 0.10, steps=120)]
    assert not rows[-1]["scored"] and rows[-1]["why_not"].startswith("budget-bound")
    assert exp.by_seed(rows, exp.CLARS_NW, lr).keys() == {0, 1, 2, 3}
    assert exp.decide_claim(rows, REG)[0] == "supported"


def test_plan_searches_in_order_then_adds_evaluation_seeds_at_the_regime():
    pts = exp.plan("cpu", [])
    assert [(p["learning_rate"], p["seed"]) for p in pts] == [(REG[0], SEL), (REG[0], SEL)]
    assert [p["warmup_epochs"] for p in pts] == [0.7, 0.0]  # 10% of 7 epochs
    rows = _search([1.0, 5.0])
    pts = exp.plan("cpu", rows)
    ev_pts = [p for p in pts if p["seed"] != SEL]
    assert {(p["optimizer"], p["learning_rate"]) for p in ev_pts} == {("clars", REG[1]),
                                                                      ("lars", REG[1])}
    assert sorted({p["seed"] for p in ev_pts}) == [0, 1, 2, 3]
    assert not any(math.isclose(p["learning_rate"], REG[2]) for p in pts)


def test_every_scored_run_has_200_steps_and_warmup_is_5_to_10_percent():
    base = exp.base_config("cpu")
    _, total = base.run_steps(base.num_train_examples())
    assert total >= harness.MIN_SCORED_STEPS
    assert 0.05 <= exp.WARMUP_FRAC <= 0.10
