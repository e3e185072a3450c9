"""Tests for the lars-jax command line, config files and the sweep runner."""

from __future__ import annotations

import dataclasses
import json
import tomllib

import pytest
from _sweep_helpers import TinyTrainer, tiny_base

from lars_jax.runs import cli
from lars_jax.runs.config_io import to_toml
from lars_jax.runs.sweep import run_sweep
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
    run_sweep(tiny_base(), {"batch_size": [128, 256]}, out, train_fn=TinyTrainer(),
              log=lambda m: None)
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
    from lars_jax.runs.errors import ConfigError

    late = ConfigError("TrainConfig.batch_size=256: larger than the 100 training examples")
    monkeypatch.setattr(cli, "_train_fn", lambda: raising(late))
    rc, _, err = _run_cli(capsys, *argv)
    assert rc == 2 and "larger than the 100 training examples" in err and "Traceback" not in err
    monkeypatch.setattr(cli, "_train_fn", lambda: raising(KeyboardInterrupt()))
    rc, _, err = _run_cli(capsys, *argv)
    assert rc == 130 and "run the same command again to resume" in err
    monkeypatch.setattr(cli, "_train_fn", lambda: raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # unexpected errors keep their traceback
        cli.main(argv)



def test_run_errors_are_caught_by_type(capsys, tmp_path, monkeypatch):
    """Any `RunError` (whatever its class name) is one line and exit status 1; a
    `ConfigError` raised during the run is exit status 2."""
    from lars_jax.runs.errors import ConfigError, RunError

    class DiskFull(RunError):
        pass

    argv = ["train", "--workdir", str(tmp_path / "w"), "--num-devices", "1"]
    for exc, code in ((DiskFull("no space left"), 1), (ConfigError("TrainConfig.x=1: bad"), 2)):
        def run(config, exc=exc):
            raise exc

        monkeypatch.setattr(cli, "_train_fn", lambda run=run: run)
        rc, _, err = _run_cli(capsys, *argv)
        assert rc == code and err.count("\n") == 1 and str(exc) in err, (rc, err)
