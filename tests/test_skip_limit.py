"""``--nan-policy skip``'s limit holds on every step, not only on logged ones (issue 30
item 3): the device stops changing the state at the step whose skip passes
``max_skipped_fraction``, the host reads the count at the next log point, and the run stops
there with the count that passed the limit."""

import json
from pathlib import Path

import pytest
from _train_jobs import tiny_config, tiny_data

from lars_jax.runs.run_files import SUMMARY_FILE


def test_the_skip_limit_stops_at_the_step_that_passed_it(tmp_path):
    """Before: the run stopped at its first log point (step 10) with 9 of 31 steps skipped,
    the limit being 3.1."""
    from lars_jax.train import train
    from lars_jax.train.loop import NonFiniteError

    # 256 examples / batch 32 = 8 steps per epoch; 3.875 epochs = 31 steps. The warmup of
    # one step from 0 makes step 1's update zero (finite, applied); from step 2 on the
    # rate 1e30 overflows the parameters, so every step is skipped and the schedule stays.
    cfg = tiny_config(tmp_path, model="mlp1", num_devices=1, optimizer="sgd",
                      learning_rate=1e30, lr_scaling="none", warmup_epochs=0.125,
                      warmup_start="zero", epochs=3.875, nan_policy="skip",
                      max_skipped_fraction=0.1, log_every_steps=10,
                      checkpoint_every_steps=-1)
    # by hand: the limit is 0.1 x 31 = 3.1 steps, so the 4th skipped step (step 5: one
    # applied step, then 4 skipped) passes it
    with pytest.raises(NonFiniteError, match=r"^4 non-finite steps skipped of 31, more than "
                       r"max_skipped_fraction=0.1 \(passed at step 5\)"):
        train(cfg, data=tiny_data())
    saved = json.loads((Path(tmp_path) / SUMMARY_FILE).read_text())
    assert saved["status"] == "nonfinite"
    assert saved["skipped_steps"] == 4 and saved["skip_limit_step"] == 5
    rows = [json.loads(line) for line in (Path(tmp_path) / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [10]  # stopped at its log
