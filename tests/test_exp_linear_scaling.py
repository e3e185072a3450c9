"""Experiment 1 v3 (linear scaling + warmup, LARS, B_max): the pre-set criteria decide both
ways on synthetic rows; budget-bound and edge cells are excluded; the lr is selected on a
seed that is never compared. The expected verdicts follow from the rules by hand."""

from __future__ import annotations

import importlib
import math

import pytest

from experiments import harness

ls = importlib.import_module("experiments.linear_scaling_warmup")
SGD_BATCHES = [16, 64, 256, 512, 1024, 2048]
STEPS = {b: int(round(2 * 60000 // b)) for b in SGD_BATCHES}  # 2 epochs
SEED_NOISE = {0: 0.001, 1: -0.002, 2: 0.0015, 3: -0.0005}
SEL = ls.SELECTION_SEED


def _rows(opt, acc_of, batches=SGD_BATCHES, best_factor=1.0, selection_acc=None):
    """A 3-point selection grid (best at ``best_factor`` x the centre, 2 points ahead of
    the others) and 4 evaluation seeds at that lr; rows scored by the harness's rule."""
    c = ls.LR_CENTRE[opt]
    rows = []
    for b in batches:
        sel = selection_acc if selection_acc is not None else acc_of(b, 0)
        for f in (0.5, 1.0, 2.0):
            rows.append({"seed": SEL, "learning_rate": c * f,
                         "test_accuracy": sel - (0.0 if f == best_factor else 0.02)})
        rows += [{"seed": s, "learning_rate": c * best_factor, "test_accuracy": acc_of(b, s)}
                 for s in (0, 1, 2, 3)]
        for r in rows[-7:]:
            r.update(optimizer=opt, batch_size=b, total_steps=STEPS[b],
                     budget_exempt=STEPS[b] < 200, bn_examples=16)
            r["scored"], r["why_not"] = harness.score_row(r, selection_seeds=(SEL,))
    return rows


def flat(b, s):
    return 0.89 + SEED_NOISE[s] + 0.0005 * ((b // 16 + s) % 3 - 1)


def drop_from(b0, pts, jitter=0.001):
    def acc(b, s):
        return flat(b, s) - (pts / 100 + jitter * (s - 1.5) if b >= b0 else 0.0)
    return acc


def test_supported_when_every_batch_of_the_range_holds_and_budget_bound_ones_do_not_count():
    # a 5-point drop at 1024 and 2048 (117 and 58 steps): budget-bound, not scored
    rows = _rows("sgd", drop_from(1024, 5.0))
    v, details = ls.LINEAR_SCALING(rows)
    assert v == "supported", details
    assert any("B=1024" in d and "budget-bound" in d for d in details)


def test_contradicted_by_a_drop_whose_interval_lies_beyond_the_margin():
    v, details = ls.LINEAR_SCALING(_rows("sgd", drop_from(512, 3.0)))
    assert v == "contradicted", details
    assert any("B=512" in d and "**fails**" in d for d in details)


def test_a_drop_overlapping_the_margin_is_undecided():
    # mean drop 1.0 point, per-seed spread 1 point: the interval straddles -1
    v, details = ls.LINEAR_SCALING(_rows("sgd", drop_from(512, 1.0, jitter=0.01)))
    assert v == "inconclusive", details
    assert any("B=512" in d and "undecided" in d for d in details)


def test_an_edge_cell_is_not_scored_even_with_a_large_drop():
    rows = [r for r in _rows("sgd", drop_from(512, 5.0)) if r["batch_size"] != 512]
    rows += [r for r in _rows("sgd", drop_from(512, 5.0), best_factor=0.5)
             if r["batch_size"] == 512]
    v, details = ls.LINEAR_SCALING(rows)
    assert v == "inconclusive", details
    assert any("B=512" in d and "edge" in d for d in details)


def test_selection_seed_accuracy_never_enters_the_compared_seeds():
    # the selection seed sees a 30-point drop at 512; the evaluation seeds do not
    rows = [r for r in _rows("sgd", flat) if r["batch_size"] != 512]
    rows += _rows("sgd", flat, batches=[512], selection_acc=0.59)
    cell = ls.cells(rows, "sgd")[512]
    assert sorted(cell["seeds"]) == [0, 1, 2, 3] and SEL not in cell["seeds"]
    assert ls.LINEAR_SCALING(rows)[0] == "supported"
    pts = ls.plan("cpu", rows)
    assert {p["seed"] for p in pts} == {SEL, 0, 1, 2, 3}
    assert all(p["learning_rate"] == pytest.approx(ls.LR_CENTRE[p["optimizer"]])
               for p in pts if p["seed"] != SEL and p["optimizer"] == "sgd")


def test_lars_extends_supported_and_contradicted_on_the_paired_difference():
    sgd = _rows("sgd", drop_from(512, 3.0))
    better = _rows("lars", lambda b, s: flat(b, s) + 0.001, batches=[16, 64, 256, 512])
    v, details = ls.LARS_EXTENDS(sgd + better)
    assert v == "supported", details
    worse = _rows("lars", drop_from(512, 6.0), batches=[16, 64, 256, 512])
    assert ls.LARS_EXTENDS(sgd + worse)[0] == "contradicted"
    # SGD keeps its accuracy at every scored batch: nothing to extend
    v, details = ls.LARS_EXTENDS(_rows("sgd", flat) + better)
    assert v == "inconclusive" and "No scored batch where SGD fails" in details[-1]


EXP5 = {"fits": {"0.12": {"b_crit": 2000.0, "b_crit_lo": 1500.0, "b_crit_hi": 2500.0,
                          "e_min": 60000.0, "e_min_lo": 50000.0, "e_min_hi": 70000.0}}}


def test_b_max_prediction_by_hand():
    p = ls.b_max_prediction(EXP5, 0.11, 120000.0)
    assert p["b_max"] == pytest.approx(2000.0)  # 2000 x (120000/60000 - 1)
    assert p["lo"] == pytest.approx(1500 * (120000 / 70000 - 1))
    assert p["hi"] == pytest.approx(2500 * (120000 / 50000 - 1))


def test_b_max_supported_within_a_factor_two_and_contradicted_far_below():
    # holds through 1024 (budget-bound rows count here), fails at 2048: B_max ~ 1448
    v, details = ls.decide_b_max(_rows("sgd", drop_from(2048, 4.0)), EXP5)
    assert v == "supported", details
    # fails already at 64: bracket [16, 64], far below 1071 / 2
    v, details = ls.decide_b_max(_rows("sgd", drop_from(64, 4.0)), EXP5)
    assert v == "contradicted", details
    assert ls.decide_b_max(_rows("sgd", flat), None)[0] == "inconclusive"


def test_plan_extends_an_edge_then_adds_evaluation_seeds():
    c = ls.LR_CENTRE["sgd"]
    rows = [r for r in _rows("sgd", flat, batches=[16], best_factor=2.0) if r["seed"] == SEL]
    pts = [p for p in ls.plan("cpu", rows) if p["batch_size"] == 16 and p["optimizer"] == "sgd"]
    assert [p["learning_rate"] for p in pts][-1] == pytest.approx(4 * c)
    assert all(p["seed"] == SEL for p in pts)
    rows.append({**rows[-1], "learning_rate": 4 * c, "test_accuracy": 0.5})
    pts = [p for p in ls.plan("cpu", rows) if p["batch_size"] == 16 and p["optimizer"] == "sgd"]
    assert [p["seed"] for p in pts if p["seed"] != SEL] == [0, 1, 2, 3]
    assert all(math.isclose(p["learning_rate"], 2 * c) for p in pts if p["seed"] != SEL)
