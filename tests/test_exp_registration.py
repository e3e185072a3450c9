"""Issue 23's rules as the harness enforces them: pre-registration with a criterion sha
(analysis refuses rows of another sha), row scoring (budget-bound, degenerate BatchNorm,
selection seeds) and the interval/margin rule. Synthetic rows only, no training."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from experiments import evidence as ev
from experiments import harness


def _decide_a(rows):
    return "supported", []


def _decide_b(rows):
    return "contradicted", []


def _spec(decide=_decide_a, seeds=(0, 1, 2, 3)):
    return harness.criterion_spec("holds when ...", grids={"batches": [16, 64]},
                                  seeds={"selection": 100, "evaluation": seeds},
                                  budgets={"epochs": 2}, decide=[decide])


def _row(sha, **kw):
    return {"criterion_sha": sha, "finished_at": "2026-12-07T08:00:00+00:00", "seed": 0,
            "total_steps": 300, "scored": True, "budget_exempt": False, **kw}


def test_sha_covers_text_grids_seeds_and_decide_source():
    a = _spec()
    assert len(a["criterion_sha"]) == 64 and "def _decide_a" in a["decide_source"]
    assert _spec()["criterion_sha"] == a["criterion_sha"]  # deterministic
    for other in (_spec(decide=_decide_b), _spec(seeds=(0, 1))):
        assert other["criterion_sha"] != a["criterion_sha"]


def test_preregister_fixes_once_and_refuses_a_changed_criterion(tmp_path):
    first = harness.preregister(tmp_path, _spec())
    stored = json.loads((tmp_path / "criterion.json").read_text())
    assert stored["fixed_at"] == first["fixed_at"] and stored["decide_source"]
    again = harness.preregister(tmp_path, _spec())  # same criterion: kept, time unchanged
    assert again["fixed_at"] == first["fixed_at"]
    with pytest.raises(harness.CriterionMismatch, match="superseded") as e:
        harness.preregister(tmp_path, _spec(decide=_decide_b))
    assert "\n" not in str(e.value)


def test_rows_of_another_sha_or_unregistered_rows_are_refused(tmp_path):
    sha = _spec()["criterion_sha"]
    other = _spec(decide=_decide_b)["criterion_sha"]
    (tmp_path / "rows.jsonl").write_text(json.dumps(_row(sha)) + "\n")
    assert len(harness.load_registered_rows(tmp_path, sha)) == 1
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write(json.dumps(_row(other)) + "\n")
    with pytest.raises(harness.CriterionMismatch, match="refusing to score") as e:
        harness.load_registered_rows(tmp_path, sha)
    assert "\n" not in str(e.value) and ":2:" in str(e.value)
    bare = {k: v for k, v in _row(sha).items() if k != "scored"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(bare) + "\n")
    with pytest.raises(harness.CriterionMismatch, match="lacks"):
        harness.load_registered_rows(tmp_path, sha)
    # rows.jsonl without criterion.json: a folder of an unregistered criterion
    with pytest.raises(harness.CriterionMismatch, match="without criterion.json"):
        harness.preregister(tmp_path, _spec())


def test_report_only_refuses_a_folder_fixed_under_another_criterion(tmp_path):
    """run_experiment checks the sha before any training or analysis."""
    harness.preregister(tmp_path, _spec(decide=_decide_b))
    reg = harness.Registered(_spec(), lambda rows: [], lambda *a: {})
    args = argparse.Namespace(out=str(tmp_path), preset="smoke", report_only=True,
                              max_minutes=None, shard=None)
    with pytest.raises(harness.CriterionMismatch, match="refusing to score"):
        harness.run_experiment("x", args, lambda p: None, registered=lambda p, b: reg)
    with pytest.raises(ValueError, match="exactly one"):
        harness.run_experiment("x", args, lambda p: None)


@pytest.mark.parametrize("row, want", [
    ({"seed": 0, "total_steps": 200, "budget_exempt": False}, (True, None)),
    ({"seed": 0, "total_steps": 199, "budget_exempt": False},
     (False, "budget-bound: 199 steps < 200")),
    ({"seed": 0, "total_steps": 29, "budget_exempt": True}, (True, None)),
    ({"seed": 0, "total_steps": 500, "budget_exempt": False, "bn_examples": 2},
     (False, "BatchNorm over 2 examples < 4")),
    ({"seed": 0, "total_steps": 500, "budget_exempt": True, "bn_examples": 3},
     (False, "BatchNorm over 3 examples < 4")),  # exemption covers the budget only
    ({"seed": 0, "total_steps": 500, "budget_exempt": False, "bn_examples": 4}, (True, None)),
    ({"seed": 100, "total_steps": 500, "budget_exempt": False},
     (False, "lr-selection seed 100")),
])
def test_score_row_excludes_budget_bound_degenerate_and_selection_rows(row, want):
    assert harness.score_row(row, selection_seeds=(100,)) == want
    assert harness.scored([{**row, "scored": want[0]}]) == ([{**row, "scored": True}]
                                                            if want[0] else [])


def _iv(lo, hi, n=4):
    return ev.Interval((lo + hi) / 2, (hi - lo) / 6, lo, hi, n, math.nan, 0)


@pytest.mark.parametrize("iv, low, high, want", [
    (_iv(-0.9, 0.4), -1.0, math.inf, "holds"),       # wholly inside [-1, inf)
    (_iv(-1.4, -0.2), -1.0, math.inf, "undecided"),  # overlaps the edge (v2 called it fails)
    (_iv(-2.5, -1.1), -1.0, math.inf, "fails"),      # wholly beyond
    (_iv(-0.9, 0.4, n=3), -1.0, math.inf, "undecided"),  # 3 seeds decide nothing
    (_iv(0.5, 2.0), 1 / 3, 3.0, "holds"),
    (_iv(3.5, 9.0), 1 / 3, 3.0, "fails"),
    (_iv(0.1, 0.2), 1 / 3, 3.0, "fails"),
    (_iv(2.0, 4.0), 1 / 3, 3.0, "undecided"),
])
def test_margin_status_is_decided_by_the_whole_interval(iv, low, high, want):
    assert ev.margin_status(iv, low, high)[0] == want


def test_margin_status_of_a_t_interval_by_hand():
    # differences -1.2, -0.8, -1.0, -1.0 points: mean -1.0, sd 0.1633, se 0.08165,
    # t(0.975, 3) = 3.1824 -> half width 0.2598: [-1.26, -0.74] overlaps -1: undecided
    d = ev.interval([-1.2, -0.8, -1.0, -1.0])
    assert d.lo == pytest.approx(-1.2598, abs=1e-3) and d.hi == pytest.approx(-0.7402, abs=1e-3)
    assert ev.margin_status(d, low=-1.0)[0] == "undecided"
    assert ev.margin_status(ev.interval([-0.2, 0.1, 0.0, -0.1]), low=-1.0)[0] == "holds"
