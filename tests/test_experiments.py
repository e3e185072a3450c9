"""The helpers of experiments/harness.py, tested on hand-made rows and files.

Every experiment runs through the registered (v3) loop; its decide functions are tested
in tests/test_exp_*.py and its smoke preset (``--preset smoke``) is run by hand.
"""

import importlib
import json
import math
from pathlib import Path

import pytest

from experiments import harness

ROOT = Path(__file__).resolve().parent.parent
# the other four experiments' presets: tests/test_exp_linear_scaling.py,
# tests/test_exp_noise_scale.py, tests/test_exp_clars_no_warmup.py, tests/test_exp_small_batch.py
EXPERIMENTS = ["page_weight_decay"]


def test_method_matching_and_outcomes():
    methods = [harness.Method("sgd-lin", {"optimizer": "sgd", "lr_scaling": "linear"}),
               harness.Method("lars", {"optimizer": "lars"})]
    row = {"status": "done", "varied": {"optimizer": "lars"}, "config": {"optimizer": "sgd"},
           "summary": {"status": "ok", "test_accuracy": 0.75}}
    assert harness.method_of(row, methods) == "lars"  # varied overrides config
    assert harness.final_accuracy(row) == 0.75
    assert harness.outcome(row) == "ok"
    bad = {"status": "failed", "error": "NonFiniteError: non-finite loss or gradients at step 3"}
    assert harness.outcome(bad) == "diverged" and math.isnan(harness.final_accuracy(bad))
    assert harness.outcome({"status": "failed", "error": "ValueError: x"}) == "failed"
    assert harness.outcome({"status": "partial"}) == "unfinished"
    assert harness.method_of({"config": {"optimizer": "clars"}}, methods) is None


def test_mean_spread_and_curves():
    st = harness.mean_spread([0.5, 0.7, float("nan")])
    assert st["n"] == 2 and math.isclose(st["mean"], 0.6)
    assert math.isclose(st["std"], math.sqrt(0.02))
    assert harness.fmt_pm(harness.mean_spread([])) == "no finished run"
    metrics = [{"kind": "train", "step": 1, "diag/a/kernel/w_sqnorm": 2.0},
               {"kind": "eval", "epoch": 0.5, "test_accuracy": 0.3},
               {"kind": "train", "step": 2, "diag/a/kernel/w_sqnorm": 1.5,
                "diag/b/kernel/w_sqnorm": 4.0}]
    xs, ys = harness.curve(metrics, "test_accuracy")
    assert xs.tolist() == [0.5] and ys.tolist() == [0.3]
    ser = harness.layer_series(metrics, "w_sqnorm")
    assert list(ser) == ["diag/a/kernel", "diag/b/kernel"]
    assert ser["diag/a/kernel"][1].tolist() == [2.0, 1.5]


def test_expand_and_save_json(tmp_path):
    pts = harness.expand([harness.Method("a", {"optimizer": "sgd", "seed": 9})], seed=[0, 1])
    assert pts == [{"optimizer": "sgd", "seed": 0}, {"optimizer": "sgd", "seed": 1}]
    p = harness.save_json({"x": float("nan"), "y": [1.0]}, tmp_path / "s.json")
    assert json.loads(p.read_text()) == {"x": None, "y": [1.0]}  # NaN as null (run_files)


def test_presets_are_valid_configs():
    """Every preset's run list builds valid TrainConfigs (validated before any compute)."""
    from lars_jax.runs.sweep import plan_sweep

    for name in EXPERIMENTS:
        mod = importlib.import_module(f"experiments.{name}")
        for preset in harness.PRESETS:
            base = mod.base_config(preset)
            if name == "page_weight_decay":
                pts = mod.plan(preset, [])
            else:
                pts = mod.points(preset, base)
            assert pts, (name, preset)
            planned = plan_sweep(base, pts, Path("/nonexistent") / name / preset)
            assert len(planned) == len(pts)


def test_shard_validation(tmp_path):
    from lars_jax.train import TrainConfig

    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            harness.run_or_load(TrainConfig(), [{"seed": 0}], tmp_path / "runs", shard=bad)


def _time_v_block(wall: str, user: float, sys_s: float) -> str:
    return ("\tCommand being timed: \"python experiments/x.py --preset cpu\"\n"
            f"\tUser time (seconds): {user}\n\tSystem time (seconds): {sys_s}\n"
            f"\tElapsed (wall clock) time (h:mm:ss or m:ss): {wall}\n\tExit status: 0\n")


def test_time_v_note_sums_every_invocation_of_every_worker(tmp_path):
    # worker1 was started twice with `/usr/bin/time -v -a -o`: two blocks in one file,
    # 1:00.00 + 0:30.00 = 1.5 min wall and (15 + 5) + (8 + 2) s = 0.5 min CPU; worker2
    # ran once for 1:02:00 (62 min) with 120 + 60 s CPU (3 min)
    (tmp_path / "time_v_worker1.txt").write_text(
        _time_v_block("1:00.00", 15.0, 5.0) + _time_v_block("0:30.00", 8.0, 2.0))
    (tmp_path / "time_v_worker2.txt").write_text(_time_v_block("1:02:00", 120.0, 60.0))
    note = harness.time_v_note(tmp_path)
    assert "worker1: 2 invocations, 1.5 min wall, 0.5 min CPU" in note
    assert "worker2: 62.0 min wall, 3.0 min CPU" in note
    assert "all 3 invocations: 63.5 min of summed wall time, 3.5 min CPU" in note
    assert harness.time_v_note(tmp_path / "none") == ""


def test_presets_name_only_what_the_scripts_define():
    assert harness.PRESETS == ("smoke", "cpu")
    assert "full" not in harness.preset_note("cpu")
    with pytest.raises(ValueError, match="preset"):
        harness.default_out("x", "full")
