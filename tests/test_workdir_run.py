"""A workdir holds one run (issue 30 item 1): rerunning it with a structural or result
field changed is refused with one line naming the fields and the ways out, before anything
is written there; cosmetic fields may change; ``extend_epochs`` raises the epochs of a
finished run and summary.json records it.

One finished run (mlp1 on 256 tiny images, batch 32: 8 steps per epoch) is trained once and
copied for each test."""

import json
import shutil
from pathlib import Path

import pytest
from _train_jobs import tiny_config, tiny_data

from lars_jax.runs.errors import ConfigError


def _cfg(workdir, **kw):
    base = dict(model="mlp1", num_devices=1, epochs=1.0, warmup_epochs=0.0,
                checkpoint_every_steps=0, log_every_steps=4, crop_padding=0,
                learning_rate=0.5)
    base.update(kw)
    return tiny_config(workdir, **base)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from lars_jax.train import train

    folder = tmp_path_factory.mktemp("finished") / "run"
    summary = train(_cfg(folder), data=tiny_data())
    assert summary["status"] == "ok" and summary["steps"] == 8
    return folder


@pytest.fixture
def workdir(finished, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(finished, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (checkpoints included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_changed_epochs_is_refused_and_extend_epochs_trains_on(workdir):
    """Before: --epochs 2 on the finished 1-epoch run went on from step 8 under a new
    schedule, with only "resuming from step 8" on stderr."""
    from lars_jax.train import train

    before = _files(workdir)
    with pytest.raises(ConfigError) as e:
        train(_cfg(workdir, epochs=2.0), data=tiny_data())
    line = _one_line(e)
    assert "changed: epochs 1.0 -> 2.0" in line
    assert "new --workdir" in line and "--extend-epochs" in line
    assert _files(workdir) == before  # nothing written
    with pytest.raises(ConfigError, match="only raises epochs"):
        train(_cfg(workdir, epochs=0.5, extend_epochs=True), data=tiny_data())
    # the explicit flag: from the final checkpoint (step 8) on to 16 steps, recorded
    summary = train(_cfg(workdir, epochs=2.0, extend_epochs=True), data=tiny_data())
    assert summary["status"] == "ok" and summary["resumed_from_step"] == 8
    assert summary["steps"] == 16
    assert summary["epochs_extended"] == [{"from_epochs": 1.0, "from_step": 8,
                                           "to_epochs": 2.0}]
    assert json.loads((workdir / "summary.json").read_text()) == summary
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 2.0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [4, 8, 12, 16]
    # the extended run is now the workdir's: the old length is refused in turn
    with pytest.raises(ConfigError, match=r"changed: epochs 2.0 -> 1.0"):
        train(_cfg(workdir, epochs=1.0), data=tiny_data())


def test_changed_learning_rate_on_a_finished_run_is_refused(workdir):
    """Before: it trained nothing, yet rewrote summary.json and config.json as lr 0.3 with
    the lr-0.5 run's accuracy."""
    from lars_jax.train import train

    before = _files(workdir)
    with pytest.raises(ConfigError) as e:
        train(_cfg(workdir, learning_rate=0.3, seed=1), data=tiny_data())
    line = _one_line(e)
    assert line.startswith(f"TrainConfig.learning_rate=0.3: {workdir} holds another run "
                           "(changed: learning_rate 0.5 -> 0.3, seed 0 -> 1)")
    assert _files(workdir) == before
    assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.5
    # cosmetic fields may change: the finished run's results are kept
    kept = train(_cfg(workdir, progress=True, plot=False, checkpoint_every_steps=2,
                      keep_checkpoints=5), data=tiny_data())
    assert kept == json.loads(before["summary.json"])


def test_changed_model_is_refused_and_config_json_is_not_overwritten(workdir):
    """Before: the refused run (its checkpoints were mlp1's) rewrote config.json as mlp2."""
    from lars_jax.train import train
    from lars_jax.train.checkpoint import CheckpointError

    before = _files(workdir)
    with pytest.raises(ConfigError, match=r"changed: model 'mlp1' -> 'mlp2'"):
        train(_cfg(workdir, model="mlp2"), data=tiny_data())
    assert _files(workdir) == before
    # a folder with the checkpoints only (no config.json, no summary.json): the checkpoints'
    # own check refuses, and still nothing names the refused run's model
    (workdir / "config.json").unlink()
    (workdir / "summary.json").unlink()
    with pytest.raises(CheckpointError, match="model='mlp1' \\(run: 'mlp2'\\)"):
        train(_cfg(workdir, model="mlp2"), data=tiny_data())
    assert not (workdir / "config.json").exists()
