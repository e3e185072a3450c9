"""Experiment 4 v3 (Masters & Luschi, small batches): the pre-set criteria decide both ways
on synthetic rows (no training). Each cell's lr is chosen on the selection seed from a
3-point grid (an edge best is not scored); small minus large cells are paired over the 4
evaluation seeds, per batch, and decided by the interval rule with margin 0. Expected
verdicts and intervals are worked out by hand from the rules as written."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from experiments import harness

exp = importlib.import_module("experiments.small_batch")
SEL = exp.SELECTION_SEED
CENTRES = exp.CELLS["cpu"]
JITTER = {0: 0.001, 1: -0.001, 2: 0.0005, 3: -0.0005}


def _row(cell, e, seed, acc, steps=None, loss=0.3):
    arm, b = cell
    r = {"arm": arm, "batch_size": b, "log2_lr": e, "seed": seed, "test_accuracy": acc,
         "final_train_loss": loss, "budget_exempt": False,
         "total_steps": steps if steps is not None else 32768 // b}
    if arm != "none":
        r["bn_examples"] = b if arm == "bn" else min(int(arm[5:]), b)
    r["scored"], r["why_not"] = harness.score_row(r, selection_seeds=(SEL,))
    return r


def _cell(cell, acc, best_offset=0, jitter=1.0, per_seed=None, grid=exp.GRID_OFFSETS):
    """Selection grid (offsets ``grid`` from the centre) with its best at centre +
    best_offset (the others falling 1 point per log2 step away from it), then 4
    evaluation seeds there (accuracy ``acc`` + jitter x JITTER, or ``per_seed`` points
    added to ``acc``)."""
    c = CENTRES[cell]
    rows = [_row(cell, c + o, SEL, 0.80 if o == best_offset
                 else 0.70 - 0.01 * abs(o - best_offset)) for o in grid]
    for s in (0, 1, 2, 3):
        extra = per_seed[s] / 100 if per_seed else jitter * JITTER[s]
        rows.append(_row(cell, c + best_offset, s, acc + extra))
    return rows


def _verdict(key, rows):
    return exp.CRITERIA[key](rows)[0]


def test_bn_small_supported_when_a_small_batch_beats_every_large_one():
    rows = (_cell(("bn", 4), 0.85) + _cell(("bn", 8), 0.84) + _cell(("bn", 32), 0.83)
            + _cell(("bn", 128), 0.80))
    # bn4 - bn32 = +2.0 points at every seed (same jitter): interval [2, 2] holds
    assert _verdict("i_bn", rows) == "supported"


def test_bn_small_contradicted_when_a_large_batch_beats_both_small_ones():
    rows = (_cell(("bn", 4), 0.80) + _cell(("bn", 8), 0.81) + _cell(("bn", 32), 0.84)
            + _cell(("bn", 128), 0.79))
    # vs bn32: -4 and -3 points at every seed, both wholly below 0 -> contradicted
    verdict, details = exp.CRITERIA["i_bn"](rows)
    assert verdict == "contradicted", details
    assert sum("-> fails" in d for d in details) == 2


def test_a_per_batch_interval_across_zero_is_undecided():
    # none4 - none128 per seed: +3, -1, +2, -2 points: mean +0.5, interval crosses 0;
    # none32 equal to none128 at every seed (interval [0, 0]) holds -> supported; then a
    # none32 that is 1 point below at every seed fails, and none4 stays undecided.
    rows = (_cell(("none", 4), 0.80, per_seed={0: 3, 1: -1, 2: 2, 3: -2})
            + _cell(("none", 32), 0.80) + _cell(("none", 128), 0.80))
    assert _verdict("i_none", rows) == "supported"
    rows = (_cell(("none", 4), 0.80, per_seed={0: 3, 1: -1, 2: 2, 3: -2})
            + _cell(("none", 32), 0.79) + _cell(("none", 128), 0.80))
    verdict, details = exp.CRITERIA["i_none"](rows)
    assert verdict == "inconclusive", details
    assert "undecided" in details[0] and "fails" in details[1]


def test_an_edge_cell_is_not_scored_even_with_a_large_gain():
    # ghost4's best stays on the high edge after both 4x extensions (offsets +4, +6)
    rows = (_cell(("ghost4", 128), 0.90, best_offset=6, grid=(-2, 0, 2, 4, 6))
            + _cell(("ghost8", 128), 0.70) + _cell(("bn", 128), 0.80))
    verdict, details = exp.CRITERIA["iii"](rows)
    # ghost4 is +10 points but on the edge: not scored; ghost8 fails alone, so not every
    # small cell fails: inconclusive
    assert verdict == "inconclusive", details
    assert "edge" in details[0] and "fails" in details[1]
    assert exp.cell_accs(rows, ("ghost4", 128), CENTRES[("ghost4", 128)]) == (
        {}, f"edge (best lr 2^{CENTRES[('ghost4', 128)] + 6} on the high edge)")
    # once an extension puts the best inside (offset +2 of grid -2..+4), it is scored
    rows = (_cell(("ghost4", 128), 0.90, best_offset=2, grid=(-2, 0, 2, 4))
            + _cell(("ghost8", 128), 0.70) + _cell(("bn", 128), 0.80))
    assert _verdict("iii", rows) == "supported"


def test_an_edge_best_extends_the_grid_by_4x_at_most_twice():
    cell = ("none", 128)
    c = CENTRES[cell]
    rows = _cell(cell, 0.8, best_offset=-2)[:3]  # best on the low edge
    assert exp.selection_grid(rows, cell, c) == ([c - 4, c - 2, c, c + 2], None, None)
    rows += [_row(cell, c - 4, SEL, 0.85)]  # still the low edge: one more step
    assert exp.selection_grid(rows, cell, c)[0] == [c - 6, c - 4, c - 2, c, c + 2]
    rows += [_row(cell, c - 6, SEL, 0.90)]  # on the edge after two extensions: edge
    assert exp.selection_grid(rows, cell, c)[1:] == (c - 6, "low")
    rows[-1] = _row(cell, c - 6, SEL, 0.60)  # interior after extension: best c - 4
    assert exp.selection_grid(rows, cell, c)[1:] == (c - 4, None)


def test_selection_seed_and_degenerate_rows_never_enter_the_comparison():
    rows = (_cell(("bn", 4), 0.85) + _cell(("bn", 8), 0.84) + _cell(("bn", 32), 0.83)
            + _cell(("bn", 128), 0.80))
    # disastrous selection-seed and BN-over-2 rows at the best lr of bn4: not scored
    e = CENTRES[("bn", 4)]
    rows += [_row(("bn", 4), e, 5, 0.10, steps=8192)]
    rows[-1].update(bn_examples=2)
    rows[-1]["scored"], rows[-1]["why_not"] = harness.score_row(rows[-1],
                                                               selection_seeds=(SEL,))
    assert rows[-1]["why_not"] == "BatchNorm over 2 examples < 4"
    assert exp.cell_accs(rows, ("bn", 4), e)[0].keys() == {0, 1, 2, 3}
    assert _verdict("i_bn", rows) == "supported"


def test_budget_bound_evaluation_rows_leave_fewer_than_4_seeds_undecided():
    rows = (_cell(("none", 4), 0.85) + _cell(("none", 32), 0.85) + _cell(("none", 128), 0.80))
    rows = [dict(r, scored=False, why_not="budget-bound: 150 steps < 200")
            if r["arm"] == "none" and r["batch_size"] == 128 and r["seed"] in (2, 3) else r
            for r in rows]
    verdict, details = exp.CRITERIA["i_none"](rows)
    assert verdict == "inconclusive" and "n=2 < 4" in details[0]


def test_claim_ii_is_not_tested_and_says_so():
    verdict, details = exp.CRITERIA["ii"]([])
    assert verdict == "inconclusive" and "Not tested" in details[0]


def test_plan_runs_selection_grids_then_evaluation_seeds_at_interior_bests():
    pts = exp.plan("cpu", [])
    assert len(pts) == 3 * len(CENTRES) and {p["seed"] for p in pts} == {SEL}
    assert pts[0]["batch_size"] == 4  # longest cells first
    rows = _cell(("bn", 8), 0.8)[:3] + _cell(("none", 128), 0.8, best_offset=-2)[:3]
    pts = exp.plan("cpu", rows)
    ev_pts = [p for p in pts if p["seed"] != SEL]
    assert {(p["batch_size"], p["learning_rate"]) for p in ev_pts} == {
        (8, 2.0 ** CENTRES[("bn", 8)])}  # none/128 is on an edge: extended, no seeds yet
    assert sorted(p["seed"] for p in ev_pts) == [0, 1, 2, 3]
    assert {"norm": "none", "batch_size": 128, "seed": SEL,
            "learning_rate": 2.0 ** (CENTRES[("none", 128)] - 4)}.items() <= next(
        p for p in pts if p["batch_size"] == 128 and p["learning_rate"]
        == 2.0 ** (CENTRES[("none", 128)] - 4)).items()


def test_every_run_has_200_steps_and_bn_over_at_least_4_examples():
    base = exp.base_config("cpu")
    assert base.num_train_examples() >= 4096
    for (arm, b) in CENTRES:
        _, total = dataclasses.replace(base, batch_size=b).run_steps(4096)
        assert total == 32768 // b >= harness.MIN_SCORED_STEPS, (arm, b)
        if arm != "none":
            assert (b if arm == "bn" else min(int(arm[5:]), b)) >= harness.MIN_BN_EXAMPLES


def test_unknown_arm_and_preset_are_refused():
    with pytest.raises(ValueError, match="arm"):
        exp.arm_overrides("layer")
    with pytest.raises(ValueError, match="preset"):
        exp.base_config("full")
