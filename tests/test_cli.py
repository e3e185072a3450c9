"""Tests for the lars-jax command line, config files and the sweep runner."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from lars_jax import cli
from lars_jax.config_io import coerce, field_specs, load_config_file, spec_by_name, to_toml
from lars_jax.sweep import expand_grid, plan_sweep, run_name, run_sweep
from lars_jax.train.config import TrainConfig


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:  # argparse errors and --help
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _printed_config(out: str) -> dict:
    return tomllib.loads(out)


# --------------------------------------------------------------------------- parsing


def test_help_lists_every_field(capsys):
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    for argv in (["--help"], ["train", "--help"], ["sweep", "--help"]):
        rc, out, _ = _run_cli(capsys, *argv)
        assert rc == 0
        for name in fields:
            assert "--" + name.replace("_", "-") in out, (argv, name)
    rc, out, _ = _run_cli(capsys, "train", "--help")
    # Enum-like fields show their choices; help text and defaults are shown.
    assert "{sgd,lars,larc,clars}" in out and "{device,global,ghost}" in out
    assert "--flip, --no-flip" in out
    assert "Global batch size" in out and f"(default: {TrainConfig().batch_size})" in out


def test_print_config_defaults_round_trip(capsys):
    rc, out, _ = _run_cli(capsys, "train", "--print-config")
    assert rc == 0
    values = _printed_config(out)
    # None fields are commented out, everything else round-trips to the defaults.
    assert TrainConfig(**values) == TrainConfig()


def test_flags_set_fields(capsys):
    rc, out, _ = _run_cli(
        capsys,
        "train",
        "--print-config",
        "--batch-size",
        "1024",
        "--optimizer=sgd",
        "--learning_rate",
        "0.4",
        "--no-flip",
        "--nesterov",
        "--train-subset",
        "2048",
        "--epochs",
        "3",
        "--data-dir",
        "/d",
        "--test-subset",
        "none",
    )
    assert rc == 0
    v = _printed_config(out)
    assert v["batch_size"] == 1024 and v["optimizer"] == "sgd" and v["learning_rate"] == 0.4
    assert v["flip"] is False and v["nesterov"] is True and v["train_subset"] == 2048
    assert v["epochs"] == 3.0 and v["data_dir"] == "/d" and "test_subset" not in v


@pytest.mark.parametrize("suffix", ["toml", "json"])
def test_config_file_and_flag_override(capsys, tmp_path, suffix):
    values = {
        "model": "resnet8",
        "batch_size": 512,
        "epochs": 2,
        "optimizer": "larc",
        "flip": False,
    }
    path = tmp_path / f"cfg.{suffix}"
    path.write_text(to_toml(values) if suffix == "toml" else json.dumps(values))
    rc, out, _ = _run_cli(
        capsys, "train", "--config", str(path), "--print-config", "--batch-size", "128"
    )
    assert rc == 0
    v = _printed_config(out)
    assert v["model"] == "resnet8" and v["optimizer"] == "larc" and v["flip"] is False
    assert v["epochs"] == 2.0 and isinstance(v["epochs"], float)
    assert v["batch_size"] == 128  # the flag wins over the file


def test_config_file_train_table_and_sweep_table_ignored_by_train(capsys, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nseed = 7\n\n[sweep]\nout = "x"\n[sweep.grid]\nseed = [1, 2]\n')
    rc, out, _ = _run_cli(capsys, "train", "--config", str(path), "--print-config")
    assert rc == 0 and _printed_config(out)["seed"] == 7


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--optimizer", "adam"], "optimizer"),
        (["--batch-size", "x"], "batch_size"),
        (["--warmup-epochs", "3", "--epochs", "2"], "warmup_epochs"),
        (["--momentum", "1.5"], "momentum"),
        (["--train-subset", "100", "--batch-size", "256"], "train_subset"),
        (["--flip", "yes"], None),  # boolean flags take no value
    ],
)
def test_bad_values_exit_2_naming_the_field(capsys, argv, field):
    rc, out, err = _run_cli(capsys, "train", *argv)
    assert rc == 2
    assert "Traceback" not in err and out == ""
    if field is not None:
        assert f"TrainConfig.{field}=" in err
    assert len(err.strip().splitlines()) <= 2


def test_bad_config_file_exits_2(capsys, tmp_path):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("batchsize = 3\n")
    rc, _, err = _run_cli(capsys, "train", "--config", str(bad_key))
    assert rc == 2 and "batchsize" in err and "did you mean batch_size" in err
    bad_type = tmp_path / "b.toml"
    bad_type.write_text('epochs = "many"\n')
    rc, _, err = _run_cli(capsys, "train", "--config", str(bad_type))
    assert rc == 2 and "TrainConfig.epochs='many': must be a number" in err
    rc, _, err = _run_cli(capsys, "train", "--config", str(tmp_path / "missing.toml"))
    assert rc == 2 and "missing.toml" in err
    broken = tmp_path / "c.toml"
    broken.write_text("epochs = = 2\n")
    rc, _, err = _run_cli(capsys, "train", "--config", str(broken))
    assert rc == 2 and "cannot parse" in err


def test_unknown_flag_suggests(capsys):
    rc, _, err = _run_cli(capsys, "train", "--batchsize", "8")
    assert rc == 2 and "did you mean --batch-size" in err
    rc, _, err = _run_cli(capsys, "train", "--batch", "8")  # no silent abbreviations
    assert rc == 2


def test_coerce_rules():
    s = spec_by_name(TrainConfig)
    assert coerce(s["num_devices"], "NONE") is None
    assert coerce(s["batch_size"], 256.0) == 256
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size=2.5: must be an integer"):
        coerce(s["batch_size"], 2.5, cls_name="TrainConfig")
    with pytest.raises(ValueError, match="None is not allowed"):
        coerce(s["batch_size"], None)
    with pytest.raises(ValueError, match="true or false"):
        coerce(s["flip"], "maybe")
    assert coerce(s["flip"], "off") is False
    assert coerce(s["norm"], "none") == "none"  # a choice, not None: norm is not optional
    specs = field_specs(TrainConfig)
    assert len(specs) == len(dataclasses.fields(TrainConfig))


def test_load_config_file_errors(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text('{"seed": 3}')  # unknown extension: TOML, then JSON
    assert load_config_file(p) == {"seed": 3}
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="cannot parse|table/object"):
        load_config_file(p)


# --------------------------------------------------------------------------- sweep


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


class TinyTrainer:
    """A real (if trivial) run function: writes metrics.jsonl and summary.json like the
    trainer does, counts calls, and can be told to fail or be interrupted on a run."""

    def __init__(self, interrupt_on: str | None = None, fail_on: str | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.interrupt_on = interrupt_on
        self.fail_on = fail_on

    def __call__(self, config: TrainConfig) -> dict:
        wd = Path(config.workdir)
        resumed = (wd / "checkpoint").exists()
        self.calls.append((wd.name, resumed))
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "checkpoint").write_text("step 1")
        if self.interrupt_on and self.interrupt_on in wd.name:
            raise KeyboardInterrupt
        if self.fail_on and self.fail_on in wd.name:
            raise FloatingPointError("non-finite loss at step 3")
        acc = 0.5 + config.seed / 100 + config.batch_size / 1e5
        (wd / "metrics.jsonl").write_text(
            json.dumps({"step": 1, "epoch": 1.0, "loss": 1.0, "test_accuracy": acc}) + "\n"
        )
        summary = {"final_test_accuracy": acc, "steps": 1}
        (wd / "summary.json").write_text(json.dumps(summary))
        return summary


def _base() -> TrainConfig:
    return TrainConfig(model="resnet8", width=0.25, train_subset=512, epochs=1.0)


def test_sweep_runs_grid_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    grid = {"batch_size": ["128", "256"], "seed": [0, 1]}  # strings are coerced
    trainer = TinyTrainer(interrupt_on="batch_size=256__seed=0")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_base(), grid, out, train_fn=trainer, log=lambda m: None)
    assert [c[0] for c in trainer.calls] == [
        "batch_size=128__seed=0",
        "batch_size=128__seed=1",
        "batch_size=256__seed=0",
    ]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["batch_size=128__seed=0", "batch_size=128__seed=1"]
    assert rows[0]["config"]["workdir"] == str(out / "batch_size=128__seed=0")
    assert rows[0]["varied"] == {"batch_size": 128, "seed": 0}
    statuses = [p.status for p in plan_sweep(_base(), grid, out)]
    assert statuses == ["done", "done", "partial", "pending"]

    # Rerun: finished runs are skipped, the interrupted one resumes in its folder.
    trainer2 = TinyTrainer()
    results = run_sweep(_base(), grid, out, train_fn=trainer2, log=lambda m: None)
    assert trainer2.calls == [("batch_size=256__seed=0", True), ("batch_size=256__seed=1", False)]
    assert [r["status"] for r in results] == ["done"] * 4
    assert results[3]["summary"]["final_test_accuracy"] == pytest.approx(0.5 + 0.01 + 0.00256)
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "sweep.json").read_text())["grid"]["batch_size"] == [128, 256]

    # A third run does nothing.
    trainer3 = TinyTrainer()
    run_sweep(_base(), grid, out, train_fn=trainer3, log=lambda m: None)
    assert trainer3.calls == []


def test_sweep_records_failures_and_retries(tmp_path):
    out = tmp_path / "s"
    grid = {"optimizer": ["sgd", "lars"]}
    rows = run_sweep(_base(), grid, out, train_fn=TinyTrainer(fail_on="sgd"), log=lambda m: None)
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert rows[0]["error"] == "FloatingPointError: non-finite loss at step 3"
    again = TinyTrainer()
    run_sweep(_base(), grid, out, train_fn=again, log=lambda m: None)
    assert again.calls == []  # a failure is a result
    rows = run_sweep(_base(), grid, out, train_fn=again, retry_failed=True, log=lambda m: None)
    assert again.calls == [("optimizer=sgd", True)] and rows[0]["status"] == "done"
    with pytest.raises(FloatingPointError):
        run_sweep(
            _base(),
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
    rows = run_sweep(_base(), points, tmp_path, train_fn=trainer, log=lambda m: None)
    assert [c[0] for c in trainer.calls] == [
        "optimizer=sgd__learning_rate=0.1",
        "optimizer=lars__learning_rate=2__warmup_epochs=0.5",
    ]
    assert rows[1]["config"]["learning_rate"] == 2.0 and rows[1]["config"]["warmup_epochs"] == 0.5
    assert rows[0]["config"]["warmup_epochs"] == _base().warmup_epochs
    with pytest.raises(ValueError, match="repeated point"):
        run_sweep(_base(), [{"seed": 1}, {"seed": "1"}], tmp_path, train_fn=trainer)


def test_sweep_validates_before_running(tmp_path):
    trainer = TinyTrainer()
    with pytest.raises(ValueError, match="batch_size=1000.*train_subset"):
        run_sweep(_base(), {"batch_size": [128, 1000]}, tmp_path, train_fn=trainer)
    with pytest.raises(ValueError, match="did you mean batch_size"):
        run_sweep(_base(), {"batchsize": [128]}, tmp_path, train_fn=trainer)
    with pytest.raises(ValueError, match="workdir"):
        run_sweep(_base(), {"workdir": ["a"]}, tmp_path, train_fn=trainer)
    assert trainer.calls == []


def test_sweep_refuses_to_mix_configs(tmp_path):
    run_sweep(_base(), {"seed": [0]}, tmp_path, train_fn=TinyTrainer(), log=lambda m: None)
    changed = dataclasses.replace(_base(), epochs=2.0)
    with pytest.raises(ValueError, match="different config.*epochs"):
        run_sweep(changed, {"seed": [0]}, tmp_path, train_fn=TinyTrainer())


def test_sweep_treats_fields_added_since_a_run_as_defaults(tmp_path):
    """A run recorded before a config field existed still counts as done (the field had its
    default), but not if the field is now set to something else."""
    import json

    run_sweep(_base(), {"seed": [0]}, tmp_path, train_fn=TinyTrainer(), log=lambda m: None)
    results = tmp_path / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    for r in rows:
        del r["config"]["steps_per_call"]  # as written by an older lars_jax
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = TinyTrainer()
    run_sweep(_base(), {"seed": [0]}, tmp_path, train_fn=trainer, log=lambda m: None)
    assert trainer.calls == []  # done, not re-run
    changed = dataclasses.replace(_base(), steps_per_call=4)
    with pytest.raises(ValueError, match="different config.*steps_per_call"):
        run_sweep(changed, {"seed": [0]}, tmp_path, train_fn=TinyTrainer())


def test_sweep_cli_dry_run_and_grid_in_file(capsys, tmp_path):
    cfg = tmp_path / "s.toml"
    out = tmp_path / "out"
    cfg.write_text(
        'model = "resnet8"\ntrain_subset = 2048\n\n[sweep]\nout = "' + str(out) + '"\n'
        '[sweep.grid]\nbatch_size = [128, 1024]\noptimizer = ["sgd", "lars"]\n'
    )
    rc, stdout, _ = _run_cli(
        capsys, "sweep", "--config", str(cfg), "--grid", "warmup_epochs=0,0.5", "--dry-run"
    )
    assert rc == 0
    lines = stdout.splitlines()
    assert lines[-1] == f"8 runs in {out}"
    assert lines[0].split() == ["pending", "batch_size=128__optimizer=sgd__warmup_epochs=0"]
    # The command-line grid overrides the file's grid for the same field.
    rc, stdout, _ = _run_cli(
        capsys, "sweep", "--base", str(cfg), "--grid", "optimizer=larc", "--dry-run"
    )
    assert rc == 0 and stdout.splitlines()[-1].startswith("2 runs")
    rc, _, err = _run_cli(capsys, "sweep", "--base", str(cfg), "--batch-size", "64", "--dry-run")
    assert rc == 2 and "batch_size: both swept" in err
    rc, _, err = _run_cli(capsys, "sweep", "--grid", "batch_size=128,x", "--out", str(out))
    assert rc == 2 and "TrainConfig.batch_size='x'" in err
    rc, _, err = _run_cli(capsys, "sweep", "--grid", "batch_size=128")
    assert rc == 2 and "--out" in err


def test_report_cli(capsys, tmp_path):
    out = tmp_path / "s"
    run_sweep(_base(), {"batch_size": [128, 256]}, out, train_fn=TinyTrainer(), log=lambda m: None)
    rc, stdout, _ = _run_cli(capsys, "report", str(out), "--title", "Tiny")
    assert rc == 0 and "report.md" in stdout
    text = (out / "report.md").read_text()
    assert text.startswith("# Tiny") and "| batch_size=256 | 256 | done | 0.5026 |" in text
    rc, _, err = _run_cli(capsys, "report", str(tmp_path / "nope"))
    assert rc == 2 and "does not exist" in err


def test_train_command_exit_statuses(capsys, tmp_path, monkeypatch):
    """How `lars-jax train` reports the trainer's failures (exceptions of the real classes)."""
    from lars_jax.train.loop import NonFiniteError

    def raising(exc):
        def run(config):
            raise exc

        return run

    argv = ["train", "--workdir", str(tmp_path / "w"), "--num-devices", "1"]
    monkeypatch.setattr(
        cli, "_train_fn", lambda: raising(NonFiniteError("non-finite loss at step 3"))
    )
    rc, _, err = _run_cli(capsys, *argv)
    assert (
        rc == 1
        and err.strip() == "lars-jax train: error: NonFiniteError: non-finite loss at step 3"
    )
    late = ValueError("TrainConfig.batch_size=256: larger than the 100 training examples")
    monkeypatch.setattr(cli, "_train_fn", lambda: raising(late))
    rc, _, err = _run_cli(capsys, *argv)
    assert rc == 2 and "larger than the 100 training examples" in err and "Traceback" not in err
    monkeypatch.setattr(cli, "_train_fn", lambda: raising(KeyboardInterrupt()))
    rc, _, err = _run_cli(capsys, *argv)
    assert rc == 130 and "run the same command again to resume" in err
    monkeypatch.setattr(cli, "_train_fn", lambda: raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # unexpected errors keep their traceback
        cli.main(argv)


# --------------------------------------------------------------------------- a real run


def _tiny_data():
    """256 + 64 random 12x12 images; the label says which half is brighter."""
    from lars_jax.train.loop import Data

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (320, 12, 12, 1), dtype=np.uint8)
    y = (x[:, :6].mean((1, 2, 3)) > x[:, 6:].mean((1, 2, 3))).astype(np.int32)
    return Data(x[:256], y[:256], x[256:], y[256:], 2, 0.5, 0.25)
