"""The ResNet-8 arms of experiments 1 and 2 (issue 23): their pre-set criteria decide both
ways on synthetic rows laid out as the arms run them (no training); their plans select on
a seed that is never compared, do not extend the lr grid, and put the evaluation seeds of
an edge cell last; and sharing the MLP experiments' code left those experiments' committed
criterion_sha unchanged. Expected verdicts follow from the rules by hand."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path

import pytest

from experiments import harness

ls = importlib.import_module("experiments.linear_scaling_warmup")
r8 = importlib.import_module("experiments.linear_scaling_resnet8")
cl = importlib.import_module("experiments.clars_no_warmup")
c8 = importlib.import_module("experiments.clars_resnet8")
RESULTS = Path(__file__).resolve().parent.parent / "experiments" / "results"
SEL = ls.SELECTION_SEED
BATCHES = [4, 32, 128]
NOISE = {0: 0.001, 1: -0.002, 2: 0.0015, 3: -0.0005}


@pytest.mark.parametrize("mod", [ls, cl], ids=["linear_scaling_warmup", "clars_no_warmup"])
def test_the_mlp_experiments_criterion_sha_is_the_committed_one(mod):
    # the arms reuse the MLP experiments' code: its committed rows must stay scorable
    stored = json.loads((RESULTS / mod.NAME / "criterion.json").read_text())
    spec = mod.registered("cpu", mod.base_config("cpu")).spec
    assert spec["criterion_sha"] == stored["criterion_sha"]


def _cell_rows(opt, b, acc_of, best_factor=1.0):
    """A 3-point selection grid (best at ``best_factor`` x the cell's centre, 2 points ahead)
    and 4 evaluation seeds at that lr, scored by the harness's rule (200+ steps)."""
    c = r8.centre(opt, b)
    rows = [{"seed": SEL, "learning_rate": c * f,
             "test_accuracy": acc_of(b, 0) - (0.0 if f == best_factor else 0.02)}
            for f in r8.LR_FACTORS]
    rows += [{"seed": s, "learning_rate": c * best_factor, "test_accuracy": acc_of(b, s)}
             for s in r8.EVAL_SEEDS["cpu"]]
    for r in rows:
        r.update(optimizer=opt, batch_size=b, total_steps=25600 // b, budget_exempt=False,
                 bn_examples=4)
        r["scored"], r["why_not"] = harness.score_row(r, selection_seeds=(SEL,))
    return rows


def _arm(opt, acc_of, edge_at=()):
    return [r for b in BATCHES
            for r in _cell_rows(opt, b, acc_of, 0.5 if b in edge_at else 1.0)]


def flat(b, s):
    return 0.90 + NOISE[s]


def drop_at(b0, pts, jitter=0.001):
    return lambda b, s: flat(b, s) - (pts / 100 + jitter * (s - 1.5) if b >= b0 else 0.0)


def test_resnet8_linear_scaling_supported_contradicted_and_edge():
    v, details = r8.LINEAR_SCALING(_arm("sgd", drop_at(128, 0.3)))
    assert v == "supported", details  # -0.3 pt with a tight interval: inside -1
    assert "at B=4," in details[0] and any("B=32:" in d for d in details)  # base batch 4
    v, details = r8.LINEAR_SCALING(_arm("sgd", drop_at(128, 3.0)))
    assert v == "contradicted", details
    assert any("B=128" in d and "**fails**" in d for d in details)
    # the same 3-point drop in a cell whose best lr is on the low edge: not scored
    v, details = r8.LINEAR_SCALING(_arm("sgd", drop_at(128, 3.0), edge_at=(128,)))
    assert v == "inconclusive", details
    assert any("B=128" in d and "edge" in d for d in details)


def test_resnet8_lars_extends_both_ways_on_the_paired_difference():
    sgd = _arm("sgd", drop_at(128, 3.0))
    assert r8.LARS_EXTENDS(sgd + _arm("lars", flat))[0] == "supported"
    assert r8.LARS_EXTENDS(sgd + _arm("lars", drop_at(128, 6.0)))[0] == "contradicted"
    v, details = r8.LARS_EXTENDS(_arm("sgd", flat) + _arm("lars", flat))
    assert v == "inconclusive" and "No scored batch where SGD fails" in details[-1]


def test_resnet8_plan_extends_within_4x_and_runs_edge_cells_seeds_last():
    pts = r8.plan("cpu", [])
    assert {p["seed"] for p in pts} == {SEL} and len(pts) == 3 * 6  # the grids only
    # search 3: 4 x the MLP's SGD base lr 0.00625 at B/B0 = 1, as the centre at B0 = 4
    assert [p["learning_rate"] for p in pts[:3]] == pytest.approx([0.0125, 0.025, 0.05])
    c = r8.centre("sgd", 128)
    rows = [r for r in _arm("sgd", flat, edge_at=(128,)) + _arm("lars", flat)
            if r["seed"] == SEL]
    # SGD 128 best on its low edge (c/2): one 2x extension to c/4, nothing else there yet
    pts = [p for p in r8.plan("cpu", rows) if (p["optimizer"], p["batch_size"]) == ("sgd", 128)]
    assert [p["learning_rate"] for p in pts] == pytest.approx([c / 2, c, 2 * c, c / 4])
    # c/4, then c/8 best again: c/16 would leave the 8x bound, so the cell stays on the
    # edge; its evaluation seeds run at c/8 after every interior cell's
    for f, a in ((4, 0.98), (8, 0.99)):
        rows.append({**rows[-1], "optimizer": "sgd", "batch_size": 128,
                     "learning_rate": c / f, "test_accuracy": a})
    pts = r8.plan("cpu", rows)
    ev_pts = [(p["optimizer"], p["batch_size"]) for p in pts if p["seed"] != SEL]
    assert ev_pts[-4:] == [("sgd", 128)] * 4 and ev_pts.count(("sgd", 128)) == 4
    assert len(ev_pts) == 6 * 4
    edge = [p for p in pts if p["seed"] != SEL and p["batch_size"] == 128
            and p["optimizer"] == "sgd"]
    assert all(math.isclose(p["learning_rate"], c / 8) for p in edge)
    assert ls.cells(rows, "sgd")[128]["edge"] == "low"
    with pytest.raises(ValueError, match="LR_CENTRE has no centre"):
        r8.centre("sgd", 64)


def test_resnet8_runs_have_200_steps_at_the_top_batch():
    base = r8.base_config("cpu")
    top = max(r8.BATCHES["cpu"]["sgd"])
    n = base.num_train_examples()
    steps = {b: dataclasses.replace(base, batch_size=b).run_steps(n)[1] for b in BATCHES}
    assert steps == {4: 6400, 32: 800, 128: 200}  # E = 25,600 examples at every batch
    assert top == 32 * r8.BASE_BATCH == 128 and min(steps.values()) >= harness.MIN_SCORED_STEPS
    assert (base.model, base.width, base.steps_per_call) == ("resnet8", 0.25, 1)
    assert (base.base_batch_size, base.bn_ghost_size) == (4, 4)
    cb = c8.base_config("cpu")
    assert cb.run_steps(cb.num_train_examples())[1] == 201 >= harness.MIN_SCORED_STEPS
    assert math.isclose(c8.warmup_epochs(cb) / cb.epochs, 0.10, rel_tol=1e-4)


REG = c8.REGIMES["cpu"]
JIT = {0: 0.001, 1: -0.001, 2: 0.0005, 3: -0.0005}


def _crow(method, lr, seed, acc):
    r = {"method": method, "learning_rate": lr, "seed": seed, "test_accuracy": acc,
         "total_steps": 201, "budget_exempt": False, "bn_examples": 16}
    r["scored"], r["why_not"] = harness.score_row(r, selection_seeds=(SEL,))
    return r


def _search(gaps):
    return [r for lr, g in zip(REG, gaps, strict=False)
            for r in (_crow(cl.LARS_WU, lr, SEL, 0.85), _crow(cl.LARS_NW, lr, SEL, 0.85 - g / 100))]


def _claim(lr, means):
    return [_crow(m, lr, s, a + JIT[s]) for m, a in means.items() for s in (0, 1, 2, 3)]


def test_resnet8_clars_claim_both_ways_at_its_own_candidates():
    # the search runs 76 first, then 54: the regime is 54 (second candidate, 4-point gap)
    rows = _search([0.5, 4.0])
    assert cl.search(rows, REG)[0] == 54.0
    ok = rows + _claim(54.0, {cl.LARS_WU: 0.86, cl.LARS_NW: 0.80, cl.CLARS_NW: 0.858})
    assert c8.CLAIM(ok)[0] == "supported"
    bad = rows + _claim(54.0, {cl.LARS_WU: 0.86, cl.LARS_NW: 0.80, cl.CLARS_NW: 0.83})
    assert c8.CLAIM(bad)[0] == "contradicted"  # -3 points at every seed
    v, details = c8.CLAIM(_search([0.1] * len(REG)))
    assert v == "inconclusive" and any("No regime" in d for d in details)


def test_resnet8_clars_plan_has_no_best_lr_grid():
    base = c8.base_config("cpu")
    pts = c8.plan("cpu", base, [])
    assert [(p["learning_rate"], p["seed"]) for p in pts] == [(76.0, SEL), (76.0, SEL)]
    assert pts[0]["warmup_epochs"] == c8.warmup_epochs(base) and pts[1]["warmup_epochs"] == 0
    pts = c8.plan("cpu", base, _search([0.5, 4.0]))
    ev_pts = [p for p in pts if p["seed"] != SEL]
    assert len(ev_pts) == 12 and {p["learning_rate"] for p in ev_pts} == {54.0}
    assert not any(p["seed"] == SEL and p["optimizer"] == "clars" for p in pts)
    assert not any(math.isclose(p["learning_rate"], 108.0) for p in pts)


# ------------------------------------------------------------------ ResNet-8 arm v2: rule 1 gated

rf = importlib.import_module("experiments.linear_scaling_resnet8_flat")
B0F, BATCHES_F = rf.BASE_BATCH["cpu"], sorted(rf.BATCHES["cpu"]["sgd"])


def _flat_rows(opt, acc_of, fall_at_base, n_seeds=4):
    """The v2 arm's cells (centres, 3-point grids, best at the centre); every row carries
    its quarter losses: the base batch's last quarter ``fall_at_base`` below its third."""
    rows = []
    for b in BATCHES_F:
        c = rf.centre(opt, b)
        cell = [{"seed": SEL, "learning_rate": c * f,
                 "test_accuracy": acc_of(b, 0) - (0.0 if f == 1.0 else 0.02)}
                for f in rf.LR_FACTORS]
        cell += [{"seed": s, "learning_rate": c, "test_accuracy": acc_of(b, s)}
                 for s in rf.EVAL_SEEDS["cpu"][:n_seeds]]
        for r in cell:
            q3 = 0.40 + 0.01 * (r["seed"] % 7)
            fall = fall_at_base if b == B0F else 0.05
            r.update(optimizer=opt, batch_size=b, total_steps=102400 // b,
                     budget_exempt=False, bn_examples=4, loss_q3=q3, loss_q4=q3 * (1 - fall))
            r["scored"], r["why_not"] = harness.score_row(r, selection_seeds=(SEL,))
        rows += cell
    return rows


def drop_top(pts, jitter=0.001):
    return lambda b, s: flat(b, s) - (pts / 100 + jitter * (s - 1.5) if b == max(BATCHES_F)
                                      else 0.0)


def test_flat_arm_quarter_losses_by_hand():
    # logged losses at steps 10..100 of a 100-step run: (50, 75] holds 60, 70 ; (75, 100]
    # holds 80, 90, 100; a non-train row (no loss) is ignored
    losses = {10: 9.0, 50: 9.0, 60: 2.0, 70: 4.0, 80: 1.0, 90: 2.0, 100: 3.0}
    metrics = [{"step": s, "loss": v} for s, v in losses.items()]
    metrics.append({"step": 100, "test_accuracy": 0.5})
    assert rf.quarter_losses(metrics, 100) == pytest.approx((3.0, 2.0))
    q3, q4 = rf.quarter_losses([{"step": 10, "loss": 1.0}], 100)
    assert math.isnan(q3) and math.isnan(q4)


def test_flat_arm_gate_decides_budget_bound_when_the_base_loss_still_falls():
    # a 3-point drop at the top batch: contradicted once the base loss has flattened (5%
    # lower in the last quarter), budget-bound (not scored) while it still falls (15%)
    v, details = rf.LINEAR_SCALING(_flat_rows("sgd", drop_top(3.0), 0.05))
    assert v == "contradicted", details
    assert "flattened" in details[0] and "5.0% lower" in details[0]
    v, details = rf.LINEAR_SCALING(_flat_rows("sgd", drop_top(3.0), 0.15))
    assert v == "budget-bound", details
    assert "15.0% lower" in details[0] and "budget-bound" in details[0]
    assert not any("fails" in d for d in details)  # the batches are not scored at all
    # a flat accuracy: supported with the base flattened, budget-bound without
    assert rf.LINEAR_SCALING(_flat_rows("sgd", drop_top(0.3), 0.05))[0] == "supported"
    assert rf.LINEAR_SCALING(_flat_rows("sgd", drop_top(0.3), 0.12))[0] == "budget-bound"
    # just inside / outside the registered 10%
    assert rf.LINEAR_SCALING(_flat_rows("sgd", drop_top(0.3), 0.099))[0] == "supported"
    assert rf.LINEAR_SCALING(_flat_rows("sgd", drop_top(0.3), 0.101))[0] == "budget-bound"
    # three evaluation seeds at the base: the gate is not tested, nothing is decided
    v, details = rf.LINEAR_SCALING(_flat_rows("sgd", drop_top(3.0), 0.05, n_seeds=3))
    assert v == "inconclusive" and "not tested" in details[0]


def test_flat_arm_lars_gate_needs_both_base_batches_flat():
    sgd = _flat_rows("sgd", drop_top(3.0), 0.05)
    assert rf.LARS_EXTENDS(sgd + _flat_rows("lars", flat, 0.05))[0] == "supported"
    assert rf.LARS_EXTENDS(sgd + _flat_rows("lars", drop_top(6.0), 0.05))[0] == "contradicted"
    v, details = rf.LARS_EXTENDS(sgd + _flat_rows("lars", flat, 0.2))
    assert v == "budget-bound" and "LARS B0=16" in details[1] and "flattened" in details[0]
    v, _ = rf.LARS_EXTENDS(_flat_rows("sgd", drop_top(3.0), 0.2) + _flat_rows("lars", flat, 0.05))
    assert v == "budget-bound"


def test_flat_arm_budget_and_plan():
    base = rf.base_config("cpu")
    n = base.num_train_examples()
    steps = {b: dataclasses.replace(base, batch_size=b).run_steps(n)[1] for b in BATCHES_F}
    # E = 102,400 examples (epochs rounded to 1e-6: 798.7 -> 799 steps of 468 per epoch at 128)
    assert steps == {16: 6400, 128: 799, 512: 200}
    assert max(BATCHES_F) == 32 * B0F and min(steps.values()) >= harness.MIN_SCORED_STEPS
    assert (base.model, base.width, base.bn_ghost_size, base.base_batch_size) == (
        "resnet8", 0.25, 4, 16)
    assert base.bn_ghost_size >= harness.MIN_BN_EXAMPLES
    pts = rf.plan("cpu", [])
    assert {p["seed"] for p in pts} == {SEL} and len(pts) == 3 * 6  # the grids only
    assert [p["learning_rate"] for p in pts[:3]] == pytest.approx(
        [rf.centre("sgd", 16) * f for f in (0.5, 1, 2)])


def test_flat_arm_is_not_registered_without_over_budget(tmp_path):
    # the design does not pass rule 1 within rule 8's time: main refuses before writing a
    # criterion (nothing of this arm was registered)
    with pytest.raises(SystemExit, match="not registered: no cosine design passes rule 1"):
        rf.main(["--preset", "cpu", "--out", str(tmp_path)])
    assert not (tmp_path / "criterion.json").exists()
    assert not (RESULTS / rf.NAME / "criterion.json").exists()


# ------------------------------------------------------------------ ResNet-8 arm v3: constant lr

rc = importlib.import_module("experiments.linear_scaling_resnet8_const")


def test_const_arm_lr_is_the_linear_rule_held_after_warmup():
    # v2's design with only the schedule changed: at B=512 = 32 B0 and base lr 0.025 the
    # rate warms up over 5% of the 200 steps (10 steps) from 0.025 to 0.025 x 32 = 0.8 and
    # stays there to the last step (cosine would end near 0)
    from lars_jax.train.build import learning_rate_schedule

    base = rc.base_config("cpu")
    assert dataclasses.replace(base, schedule="cosine") == rf.base_config("cpu")
    c = dataclasses.replace(base, batch_size=512, learning_rate=0.025)
    spe, total = c.run_steps(c.num_train_examples())
    assert total == 200
    lr = learning_rate_schedule(c, spe, total)
    assert float(lr(0)) == pytest.approx(0.025, rel=1e-5)
    for t in (10, 100, 150, 199):
        assert float(lr(t)) == pytest.approx(0.8, rel=1e-5)


def test_const_arm_decides_like_the_gated_v2_both_ways():
    # the same rows, the same verdicts as v2 (its decide functions): contradicted with a
    # 3-point drop at the top once the base loss is flat, supported with a flat accuracy,
    # budget-bound while the base loss still falls 12%
    assert rc.LINEAR_SCALING(_flat_rows("sgd", drop_top(3.0), 0.05))[0] == "contradicted"
    assert rc.LINEAR_SCALING(_flat_rows("sgd", drop_top(0.3), 0.05))[0] == "supported"
    assert rc.LINEAR_SCALING(_flat_rows("sgd", drop_top(0.3), 0.12))[0] == "budget-bound"
    sgd = _flat_rows("sgd", drop_top(3.0), 0.05)
    assert rc.LARS_EXTENDS(sgd + _flat_rows("lars", flat, 0.05))[0] == "supported"
    assert rc.LARS_EXTENDS(sgd + _flat_rows("lars", drop_top(6.0), 0.05))[0] == "contradicted"
    assert rc.LARS_EXTENDS(sgd + _flat_rows("lars", flat, 0.2))[0] == "budget-bound"
    assert "held constant" in rc.LINEAR_SCALING.rule and "10%" in rc.LINEAR_SCALING.rule


def test_const_arm_criterion_sha_is_the_committed_one():
    # registered before its first run: the script's criterion is the stored one, its sha
    # differs from an unregistered cosine v2 spec, and every committed row carries it
    stored = json.loads((RESULTS / rc.NAME / "criterion.json").read_text())
    spec = rc.registered("cpu", rc.base_config("cpu")).spec
    assert spec["criterion_sha"] == stored["criterion_sha"]
    assert spec["budgets"]["schedule"] == "constant"
    assert spec["criterion_sha"] != rf.registered("cpu", rf.base_config("cpu")).spec[
        "criterion_sha"]
    rows = harness.load_registered_rows(RESULTS / rc.NAME, stored["criterion_sha"])
    assert all(r["finished_at"] > stored["fixed_at"] for r in rows)
