"""lars_jax.runs.sweep: grids, run names, planning, resuming and failures (with a stand-in trainer
that writes the files a real run writes; tests/test_cli.py runs the real trainer)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from _sweep_helpers import TinyTrainer, tiny_base

from lars_jax.runs.sweep import expand_grid, plan_sweep, run_name, run_sweep


def test_expand_grid_and_names():
    grid = {"batch_size": [128, 1024], "optimizer": ["sgd", "lars"], "warmup_epochs": [0.0, 2.0]}
    points = expand_grid(grid)
    assert len(points) == 8
    assert points[0] == {"batch_size": 128, "optimizer": "sgd", "warmup_epochs": 0.0}
    assert points[-1] == {"batch_size": 1024, "optimizer": "lars", "warmup_epochs": 2.0}
    names = [run_name(p) for p in points]
    assert len(set(names)) == 8
    assert names[1] == "batch_size=128__optimizer=sgd__warmup_epochs=2"
    assert run_name({}) == "base"
    assert run_name({"data_dir": "/a b/c"}) == "data_dir=-a-b-c"
    long = run_name({"data_dir": "x" * 300})
    assert len(long) <= 120 and long != run_name({"data_dir": "x" * 299})
    assert expand_grid({}) == [{}]
    for bad in ({"seed": []}, {"seed": [1, 1]}, {"seed": "12"}):
        with pytest.raises(ValueError, match="seed"):
            expand_grid(bad)


def test_sweep_runs_grid_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    grid = {"batch_size": ["128", "256"], "seed": [0, 1]}  # strings are coerced
    trainer = TinyTrainer(interrupt_on="batch_size=256__seed=0")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_base(), grid, out, train_fn=trainer, log=lambda m: None)
    assert [c[0] for c in trainer.calls] == [
        "batch_size=128__seed=0",
        "batch_size=128__seed=1",
        "batch_size=256__seed=0",
    ]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["batch_size=128__seed=0", "batch_size=128__seed=1"]
    assert rows[0]["config"]["workdir"] == str(out / "batch_size=128__seed=0")
    assert rows[0]["varied"] == {"batch_size": 128, "seed": 0}
    statuses = [p.status for p in plan_sweep(tiny_base(), grid, out)]
    assert statuses == ["done", "done", "partial", "pending"]

    # Rerun: finished runs are skipped, the interrupted one resumes in its folder.
    trainer2 = TinyTrainer()
    results = run_sweep(tiny_base(), grid, out, train_fn=trainer2, log=lambda m: None)
    assert trainer2.calls == [("batch_size=256__seed=0", True), ("batch_size=256__seed=1", False)]
    assert [r["status"] for r in results] == ["done"] * 4
    assert results[3]["summary"]["test_accuracy"] == pytest.approx(0.5 + 0.01 + 0.00256)
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "sweep.json").read_text())["grid"]["batch_size"] == [128, 256]

    # A third run does nothing.
    trainer3 = TinyTrainer()
    run_sweep(tiny_base(), grid, out, train_fn=trainer3, log=lambda m: None)
    assert trainer3.calls == []


def test_sweep_records_failures_and_retries(tmp_path):
    out = tmp_path / "s"
    grid = {"optimizer": ["sgd", "lars"]}
    rows = run_sweep(tiny_base(), grid, out, train_fn=TinyTrainer(fail_on="sgd"),
                     log=lambda m: None)
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert rows[0]["error"] == "FloatingPointError: non-finite loss at step 3"
    again = TinyTrainer()
    run_sweep(tiny_base(), grid, out, train_fn=again, log=lambda m: None)
    assert again.calls == []  # a failure is a result
    rows = run_sweep(tiny_base(), grid, out, train_fn=again, retry_failed=True, log=lambda m: None)
    assert again.calls == [("optimizer=sgd", True)] and rows[0]["status"] == "done"
    with pytest.raises(FloatingPointError):
        run_sweep(
            tiny_base(),
            {"optimizer": ["larc"]},
            out,
            train_fn=TinyTrainer(fail_on="larc"),
            stop_on_error=True,
            log=lambda m: None,
        )


def test_sweep_explicit_points(tmp_path):
    points = [
        {"optimizer": "sgd", "learning_rate": "0.1"},
        {"optimizer": "lars", "learning_rate": 2, "warmup_epochs": 0.5},
    ]
    trainer = TinyTrainer()
    rows = run_sweep(tiny_base(), points, tmp_path, train_fn=trainer, log=lambda m: None)
    assert [c[0] for c in trainer.calls] == [
        "optimizer=sgd__learning_rate=0.1",
        "optimizer=lars__learning_rate=2__warmup_epochs=0.5",
    ]
    assert rows[1]["config"]["learning_rate"] == 2.0 and rows[1]["config"]["warmup_epochs"] == 0.5
    assert rows[0]["config"]["warmup_epochs"] == tiny_base().warmup_epochs
    with pytest.raises(ValueError, match="repeated point"):
        run_sweep(tiny_base(), [{"seed": 1}, {"seed": "1"}], tmp_path, train_fn=trainer)


def test_sweep_validates_before_running(tmp_path):
    trainer = TinyTrainer()
    with pytest.raises(ValueError, match="batch_size=1000.*train_subset"):
        run_sweep(tiny_base(), {"batch_size": [128, 1000]}, tmp_path, train_fn=trainer)
    with pytest.raises(ValueError, match="did you mean batch_size"):
        run_sweep(tiny_base(), {"batchsize": [128]}, tmp_path, train_fn=trainer)
    with pytest.raises(ValueError, match="workdir"):
        run_sweep(tiny_base(), {"workdir": ["a"]}, tmp_path, train_fn=trainer)
    assert trainer.calls == []


def test_sweep_refuses_to_mix_configs(tmp_path):
    run_sweep(tiny_base(), {"seed": [0]}, tmp_path, train_fn=TinyTrainer(), log=lambda m: None)
    changed = dataclasses.replace(tiny_base(), epochs=2.0)
    with pytest.raises(ValueError, match="different config.*epochs"):
        run_sweep(changed, {"seed": [0]}, tmp_path, train_fn=TinyTrainer())


def test_sweep_treats_fields_added_since_a_run_as_defaults(tmp_path):
    """A run recorded before a config field existed still counts as done (the field had its
    default), but not if the field is now set to something else."""
    import json

    run_sweep(tiny_base(), {"seed": [0]}, tmp_path, train_fn=TinyTrainer(), log=lambda m: None)
    results = tmp_path / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    for r in rows:
        del r["config"]["steps_per_call"]  # as written by an older lars_jax
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = TinyTrainer()
    run_sweep(tiny_base(), {"seed": [0]}, tmp_path, train_fn=trainer, log=lambda m: None)
    assert trainer.calls == []  # done, not re-run
    changed = dataclasses.replace(tiny_base(), steps_per_call=4)
    with pytest.raises(ValueError, match="different config.*steps_per_call"):
        run_sweep(changed, {"seed": [0]}, tmp_path, train_fn=TinyTrainer())
