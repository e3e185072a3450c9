"""The verdict of experiment 2 (CLARS without warmup) can come out either way.

Synthetic rows (no training) that support, contradict, or leave undecided the claim are fed
to the pre-set criterion; the expected verdicts follow from the rule as written, with the
paired differences worked out by hand.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent




exp = importlib.import_module("experiments.clars_no_warmup")
SEEDS = (0, 1, 2)


def _rows(acc_at_best: dict[str, list[float]], grid_edge_ok: bool = True) -> list[dict]:
    """Seed-0 grids (the best lr interior, 1.0) plus seeds 1 and 2 at the best lr."""
    rows = []
    for m, accs in acc_at_best.items():
        # grid at seed 0: the middle lr is best, its neighbours 10 points worse
        grid = {0.5: accs[0] - 0.10, 1.0: accs[0], 2.0: accs[0] - 0.10}
        if not grid_edge_ok:
            grid = {0.5: accs[0] - 0.10, 1.0: accs[0]}
        for lr, a in grid.items():
            rows.append({"regime": "main", "method": m, "learning_rate": lr, "seed": 0,
                         "test_accuracy": a, "outcome": "ok"})
        for s, a in zip(SEEDS[1:], accs[1:], strict=True):
            rows.append({"regime": "main", "method": m, "learning_rate": 1.0, "seed": s,
                         "test_accuracy": a, "outcome": "ok"})
    return rows


WARMUP_NEEDED = {exp.LARS_WU: [0.80, 0.81, 0.79], exp.LARS_NW: [0.70, 0.72, 0.69],
                 exp.SGD_WU: [0.78, 0.78, 0.77]}


def test_supported_when_clars_matches_lars_with_warmup_and_beats_lars_without():
    # CLARS - LARS+wu = +0.2, -0.1, +0.3 points: interval lower end far above -1 point;
    # CLARS - LARS-nw = +10.2, +8.9, +10.3 points: interval above 0.
    rows = _rows({**WARMUP_NEEDED, exp.CLARS_EX: [0.802, 0.809, 0.793],
                  exp.CLARS_MB: [0.80, 0.81, 0.79]})
    verdict, details = exp.CRITERION(rows)
    assert verdict == "supported", details


def test_contradicted_when_clars_is_clearly_worse_than_lars_with_warmup():
    # CLARS - LARS+wu = -5, -5.5, -4.5 points: interval below 0, mean -5 < -1 point.
    rows = _rows({**WARMUP_NEEDED, exp.CLARS_EX: [0.75, 0.755, 0.745],
                  exp.CLARS_MB: [0.75, 0.755, 0.745]})
    verdict, details = exp.CRITERION(rows)
    assert verdict == "contradicted", details


def test_inconclusive_without_a_warmup_problem():
    # LARS without warmup as good as with warmup: nothing for CLARS to fix, whatever
    # CLARS does.
    rows = _rows({exp.LARS_WU: [0.80, 0.81, 0.79], exp.LARS_NW: [0.801, 0.808, 0.792],
                  exp.CLARS_EX: [0.60, 0.61, 0.59]})
    verdict, details = exp.CRITERION(rows)
    assert verdict == "inconclusive"
    assert any("no warmup problem" in d for d in details), details


def test_inconclusive_when_clars_neither_matches_nor_clearly_loses():
    # CLARS - LARS+wu = -2, +1, -3 points: interval includes 0 and reaches below -1 point.
    rows = _rows({**WARMUP_NEEDED, exp.CLARS_EX: [0.78, 0.82, 0.76]})
    assert exp.CRITERION(rows)[0] == "inconclusive"


def test_best_lr_on_an_edge_is_marked():
    rows = _rows({**WARMUP_NEEDED, exp.CLARS_EX: [0.80, 0.81, 0.79]}, grid_edge_ok=False)
    assert exp.best_lrs(rows)[exp.CLARS_EX] == (1.0, "high")
    _, details = exp.CRITERION(rows)
    assert any("on the high edge" in d for d in details)


def test_methods_map_back_from_their_configs():
    base = exp.base_config("cpu")
    for m in exp.METHODS:
        cfg = {**base.to_dict(), **exp.method_point(m, base, 1.0, 0)}
        assert exp.method_of(cfg) == m
    # warmup is a quarter of the budget: 3 of 12 epochs
    assert exp.method_overrides(exp.LARS_WU, base)["warmup_epochs"] == 3.0


def test_grid_extension_bounds_are_two_doublings():
    lo, hi = exp._bounds("cpu", exp.LARS_NW)
    assert math.isclose(lo, 0.0625 / 4, rel_tol=1e-6) and math.isclose(hi, 4.0, rel_tol=1e-6)
