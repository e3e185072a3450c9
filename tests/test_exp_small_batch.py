"""The verdicts of experiment 4 (Masters & Luschi, small batches) can come out either way.

Synthetic run records (no training) are fed to the pre-set criteria; the expected verdicts
follow from the rules as written (stability threshold 0.5 x ln 10 = 1.1513 nats, widths
counted by hand, paired differences worked out by hand).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent




exp = importlib.import_module("experiments.small_batch")
BATCHES = [2, 4, 8, 16, 32, 64, 128, 256, 512]


def _rec(arm, b, e, seed, loss, acc, outcome="ok"):
    return {"arm": arm, "batch_size": b, "log2_lr": e, "seed": seed, "outcome": outcome,
            "final_train_loss": loss, "epoch1_train_loss": loss, "test_accuracy": acc}


def _arm(arm, stable_ranges, best_acc, seeds=(0, 1), noise=(0.0, 0.002)):
    """Records of one arm: at each batch, lrs from one below to one above its stable range.

    Stable lrs get loss 0.4 and an accuracy peaking at the middle of the range; the edges
    get loss 2.0 (unstable, finite) below and a non-finite loss (diverged) above.
    """
    recs = []
    for b, (lo, hi) in stable_ranges.items():
        mid = (lo + hi) // 2
        for e in range(lo - 1, hi + 2):
            for s, n in zip(seeds, noise, strict=True):
                if e < lo:
                    recs.append(_rec(arm, b, e, s, 2.0, 0.3 + n))
                elif e > hi:
                    recs.append(_rec(arm, b, e, s, math.inf, None, "diverged"))
                else:
                    recs.append(_rec(arm, b, e, s, 0.4, best_acc[b] - 0.01 * abs(e - mid) + n))
    return recs


def _shrinking():  # width 9 at B=2 down to 1 at B=512
    return {b: (-14, -6 - i) for i, b in enumerate(BATCHES)}


def _growing():  # width 1 at B=2 up to 9 at B=512
    return {b: (-14, -14 + i) for i, b in enumerate(BATCHES)}


def _acc_small_best(peak_at):
    return {b: 0.85 - 0.01 * abs(math.log2(b) - math.log2(peak_at)) for b in BATCHES}


def test_stability_threshold_is_half_the_initial_loss():
    assert exp.stable(1.15) and not exp.stable(1.16)  # ln(10)/2 = 1.1513
    assert not exp.stable(math.inf) and not exp.stable(math.nan) and not exp.stable(None)


def test_small_batches_best_supported_and_contradicted():
    rows = (_arm("none", _shrinking(), _acc_small_best(4))
            + _arm("bn", _shrinking(), _acc_small_best(8)))
    verdict, details = exp.CRITERION_BEST(rows)
    assert verdict == "supported", details
    rows = (_arm("none", _shrinking(), _acc_small_best(512))
            + _arm("bn", _shrinking(), _acc_small_best(256)))
    verdict, details = exp.CRITERION_BEST(rows)
    assert verdict == "contradicted", details


def test_bn_best_outside_4_8_is_not_supported():
    # no-norm arm best at 2 (supported) but BN best at 64: BN's paired difference is
    # -1 point at both seeds (std 0) -> interval below 0 -> contradicted overall.
    rows = (_arm("none", _shrinking(), _acc_small_best(2))
            + _arm("bn", _shrinking(), _acc_small_best(64), noise=(0.0, 0.0)))
    assert exp.CRITERION_BEST(rows)[0] == "contradicted"


def test_stable_range_shrinks_supported_and_contradicted():
    rows = _arm("none", _shrinking(), _acc_small_best(4)) + _arm("bn", _shrinking(),
                                                                 _acc_small_best(8))
    verdict, details = exp.CRITERION_SHRINKS(rows)
    assert verdict == "supported", details
    assert "2: 9" in details[0] and "512: 1" in details[0]
    rows = _arm("none", _growing(), _acc_small_best(4)) + _arm("bn", _shrinking(),
                                                               _acc_small_best(8))
    assert exp.CRITERION_SHRINKS(rows)[0] == "contradicted"


def test_unmeasured_edge_makes_shrinking_inconclusive():
    rows = _arm("none", _shrinking(), _acc_small_best(4)) + _arm("bn", _shrinking(),
                                                                 _acc_small_best(8))
    # drop the diverged cell above the stable range at B=2: its upper edge is unknown
    rows = [r for r in rows if not (r["arm"] == "none" and r["batch_size"] == 2
                                    and r["log2_lr"] == -5)]
    verdict, details = exp.CRITERION_SHRINKS(rows)
    assert verdict == "inconclusive", details
    assert "not measured" in details[0]


def _ghost(best_g):
    recs = []
    for b in (64, 512):
        for g, arm in ((4, "ghost4"), (8, "ghost8"), (32, "ghost32"), (b, "bn")):
            acc = 0.85 if g == best_g else 0.82
            for s, n in ((0, 0.0), (1, 0.004)):
                recs.append(_rec(arm, b, -10, s, 0.4, acc + n))
    return recs


def test_bn_over_4_8_supported_and_contradicted():
    verdict, details = exp.CRITERION_BN(_ghost(8))
    assert verdict == "supported", details
    verdict, details = exp.CRITERION_BN(_ghost(32))
    assert verdict == "contradicted", details


def test_extend_grows_stable_ends_and_respects_bounds():
    recs = _arm("none", {2: (-12, -9)}, {2: 0.8})
    table = exp.cell_table(recs, [0, 1])
    # lrs run: -13..-8; -13 unstable, -8 diverged: both edges measured, no extension
    grid = {("none", 2): set(range(-13, -7))}
    assert not exp.extend(grid, table, (-18, 0))
    # only the stable part was run: extend by one 2x step at both ends
    grid = {("none", 2): {-11, -10}}
    assert exp.extend(grid, table, (-18, 0)) and grid[("none", 2)] == {-12, -11, -10, -9}
    # at the bound nothing is added
    grid = {("none", 2): {-11, -10}}
    assert not exp.extend(grid, table, (-11, -10))
    # nothing stable and nothing diverged: every lr too small -> extend upwards
    low = [_rec("none", 8, e, s, 2.0, 0.3) for e in (-14, -13) for s in (0, 1)]
    grid = {("none", 8): {-14, -13}}
    assert exp.extend(grid, exp.cell_table(low, [0, 1]), (-18, 0))
    assert grid[("none", 8)] == {-14, -13, -12}


def test_ghost_cells_at_or_above_the_batch_share_the_bn_run():
    assert exp.canonical_arm("ghost32", 32) == "bn"
    assert exp.canonical_arm("ghost8", 64) == "ghost8"
    cells = exp.cells("cpu")
    assert ("ghost32", 64) in cells and ("bn", 512) in cells
    assert len(cells) == len(set(cells))
