"""Experiment 1 (linear scaling + warmup): the pre-set criteria decide both ways, and the
adaptive plan extends edges and adds seeds as designed.

The synthetic rows are built so that the expected verdict follows from the criterion's
definition by hand (e.g. a 3-point drop in every seed at B=1024 is a failure).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))




ls = importlib.import_module("experiments.linear_scaling_warmup")
BATCHES = [128, 256, 512, 1024, 2048, 4096, 8192]


def _rows(opt, acc_of, batches=BATCHES):
    """Seed-0 rows on a 3-point lr grid whose middle lr is best (by 2 points), and seeds
    1 and 2 at that lr; ``acc_of(b, seed)`` is the accuracy at the best lr."""
    c = ls.LR_CENTRE[opt]
    rows = []
    for b in batches:
        for f in (0.5, 1.0, 2.0):
            acc = acc_of(b, 0) - (0.0 if f == 1.0 else 0.02)
            rows.append({"optimizer": opt, "batch_size": b, "learning_rate": c * f,
                         "seed": 0, "test_accuracy": acc})
        rows += [{"optimizer": opt, "batch_size": b, "learning_rate": c, "seed": s,
                  "test_accuracy": acc_of(b, s)} for s in (1, 2)]
    return rows


SEED_NOISE = {0: 0.001, 1: -0.002, 2: 0.0015}  # shared by all cells of a seed (pairing)


def flat(b, s):
    return 0.89 + SEED_NOISE[s]


def drop_at_1024(b, s):
    return 0.89 + SEED_NOISE[s] - (0.03 + 0.002 * s if b >= 1024 else 0.0)


def noisy_drop_at_1024(b, s):
    # mean drop 2 points, per-seed drops 5, -1 and 2: the interval includes zero
    return 0.89 + ({0: -0.05, 1: 0.01, 2: -0.02}[s] if b >= 1024 else 0.0)


def test_linear_scaling_supported_when_flat():
    v, details = ls.LINEAR_SCALING(_rows("sgd", flat))
    assert v == "supported", details
    st = ls.holding(_rows("sgd", flat), "sgd", 128)
    assert ls.flat_limit(st, 128) == (8192, None, None)


def test_linear_scaling_contradicted_by_a_paired_drop():
    rows = _rows("sgd", drop_at_1024)
    v, details = ls.LINEAR_SCALING(rows)
    assert v == "contradicted", details
    st = ls.holding(rows, "sgd", 128)
    assert ls.flat_limit(st, 128) == (512, 1024, "fails")
    # the paired difference at 1024: -(3.0, 3.2, 3.4) points -> mean -3.2
    assert st[1024][1].mean == pytest.approx(-0.032)
    assert st[1024][1].n == 3


def test_linear_scaling_inconclusive_when_noisy_or_missing():
    v, _ = ls.LINEAR_SCALING(_rows("sgd", noisy_drop_at_1024))
    assert v == "inconclusive"
    assert ls.holding(_rows("sgd", noisy_drop_at_1024), "sgd", 128)[1024][0] == "undecided"
    v, details = ls.LINEAR_SCALING(_rows("sgd", flat, batches=[128, 256, 512]))
    assert v == "inconclusive" and any("without runs" in d for d in details)


def test_small_drop_within_margin_holds():
    # 0.5-point drop in every seed: significant, but within the 1-point margin
    rows = _rows("sgd", lambda b, s: flat(b, s) - (0.005 if b == 8192 else 0.0))
    assert ls.holding(rows, "sgd", 128)[8192][0] == "holds"


def test_best_lr_is_read_from_seed_0_and_edges_are_marked():
    rows = _rows("sgd", flat)
    # make the highest lr best at B=256: the cell is on the high edge
    for r in rows:
        if r["batch_size"] == 256 and r["seed"] == 0 and r["learning_rate"] == 0.1:
            r["test_accuracy"] = 0.95
    cells = ls._cells(rows, "sgd")
    assert cells[256]["best_lr"] == 0.1 and cells[256]["edge"] == "high"
    assert cells[256]["seeds"] == {0: 0.95}  # no other seed ran at that lr
    assert cells[512]["edge"] is None and cells[512]["seeds"][2] == pytest.approx(0.8915)


def test_lars_extends_decides_both_ways():
    lars_far = _rows("lars", flat) + _rows("sgd", drop_at_1024)
    v, details = ls.LARS_EXTENDS(lars_far)
    assert v == "supported", details
    lars_short = _rows("lars", drop_at_1024) + _rows("sgd", flat)
    assert ls.LARS_EXTENDS(lars_short)[0] == "contradicted"
    both_flat = _rows("lars", flat) + _rows("sgd", flat)
    assert ls.LARS_EXTENDS(both_flat)[0] == "inconclusive"


def test_plan_extends_edges_then_adds_seeds():
    base = ls.base_config("cpu")
    c = ls.LR_CENTRE["sgd"]

    def row(lr, acc, seed=0):
        return {"optimizer": "sgd", "batch_size": 512, "learning_rate": lr, "seed": seed,
                "test_accuracy": acc}

    grid = [row(c / 2, 0.80), row(c, 0.85), row(2 * c, 0.87)]  # best on the high edge
    pts = ls.plan("cpu", base, ["sgd"], [512], grid)
    assert [p["learning_rate"] for p in pts] == [c / 2, c, 2 * c, 4 * c]
    # extended to the bound (4x the prediction) and still on the edge: no further point,
    # the seeds go to the edge lr (the report marks the cell)
    grid += [row(4 * c, 0.88)]
    pts = ls.plan("cpu", base, ["sgd"], [512], grid)
    assert [(p["learning_rate"], p["seed"]) for p in pts[-2:]] == [(4 * c, 1), (4 * c, 2)]
    assert ls._cells(grid, "sgd")[512]["edge"] == "high"
    # a low-edge best is extended downwards
    low = [row(c / 2, 0.88), row(c, 0.85), row(2 * c, 0.80)]
    assert ls.plan("cpu", base, ["sgd"], [512], low)[-1]["learning_rate"] == c / 4
    # an unfinished initial grid asks for nothing beyond it
    assert len(ls.plan("cpu", base, ["sgd"], [512], grid[:2])) == 3


def test_eval_every_gives_at_least_one_step():
    base = ls.base_config("cpu")
    for b in BATCHES:
        spe = 60000 // b
        assert round(ls.eval_every(base, b) * spe) >= 1


@pytest.mark.slow
def test_smoke_run_report_and_resume(tmp_path, monkeypatch):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST files not available")
    monkeypatch.setenv("LARS_JAX_CACHE", str(tmp_path / "xla"))
    out = tmp_path / "exp1"
    argv = ["--preset", "smoke", "--out", str(out)]
    summary = ls.main(argv)
    assert summary["verdict"] in ("supported", "contradicted", "inconclusive")
    report = (out / "report.md").read_text()
    for heading in ("## Setup", "## Verdicts", "Criterion (fixed before the run)",
                    "## Limits of the evidence"):
        assert heading in report
    n = len((out / "runs" / "results.jsonl").read_text().splitlines())
    assert n == 4  # 2 optimizers x 2 batches x 1 lr, one seed
    saved = json.loads((out / "summary.json").read_text())
    assert set(saved["criteria"]) == {"linear_scaling", "lars_extends"}
    ls.main(argv)  # resumes: nothing retrained
    assert len((out / "runs" / "results.jsonl").read_text().splitlines()) == n


def test_steps_to_target_reads_the_first_crossing():
    from experiments import harness

    m = [{"kind": "eval", "step": 10, "test_accuracy": 0.80},
         {"kind": "train", "step": 15, "loss": 0.3},
         {"kind": "eval", "step": 20, "test_accuracy": 0.875},
         {"kind": "eval", "step": 30, "test_accuracy": 0.86},
         {"kind": "eval", "step": 40, "test_accuracy": 0.89}]
    err = lambda a: 1 - a  # noqa: E731
    assert harness.steps_to_target(m, "test_accuracy", 0.13, transform=err) == 20
    assert harness.steps_to_target(m, "test_accuracy", 0.12, transform=err) == 40
    assert harness.steps_to_target(m, "test_accuracy", 0.10, transform=err) is None
    assert harness.steps_to_target(m, "loss", 0.5) == 15
    assert harness.steps_to_target(m, "test_accuracy", 0.86, below=False) == 20


def test_run_claims_are_exclusive_and_dead_claims_are_taken_over(tmp_path):
    import os
    import subprocess

    from experiments import harness

    path = tmp_path / ".claims" / "run_a"
    assert harness._claim(path)
    assert path.read_text().split()[0] == str(os.getpid())
    assert not harness._claim(path)  # held by a live process (this one)
    proc = subprocess.Popen(["true"])
    proc.wait()
    path.write_text(f"{proc.pid}\n")
    assert harness._claim(path)  # the claimant is gone: taken over
    assert path.read_text().split()[0] == str(os.getpid())


def test_presets_plan_valid_configs():
    """The first points of every preset (both experiments) are valid TrainConfigs."""
    from lars_jax.runs.sweep import plan_sweep

    ns = importlib.import_module("experiments.gradient_noise_scale")
    for preset in ("smoke", "cpu", "full"):
        base = ls.base_config(preset)
        pts = ls.plan(preset, base, list(ls.OPTIMIZERS), ls.BATCH_SIZES[preset], [])
        assert len(pts) == 2 * len(ls.BATCH_SIZES[preset]) * len(ls.LR_FACTORS[preset])
        pts5 = ns.plan(preset, base, [])
        for p in (pts, pts5):
            planned = plan_sweep(base, p, Path("/nonexistent") / preset)
            assert len(planned) == len(p)
