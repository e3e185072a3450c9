"""`lars-jax sweep` records what its training run measured: the recorded and reported test
accuracy and loss equal a NumPy evaluation of the run's final parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_data import tiny_data

from lars_jax.runs import cli


def _numpy_eval(config, state, data):
    """Mean cross-entropy and accuracy of the final state on the whole test set."""
    import jax.numpy as jnp

    from lars_jax.models import create_model

    model = create_model(config.model, num_classes=data.num_classes, norm=config.norm,
                         width=config.width, dtype=jnp.float32)
    x = (data.test_images.astype(np.float32) / 255.0 - 0.5) / 0.25
    logits = np.asarray(model.apply({"params": state.params,
                                     "batch_stats": state.batch_stats}, x, train=False),
                        np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    labels = data.test_labels
    return (float(np.mean(-logp[np.arange(len(labels)), labels])),
            float(np.mean(np.argmax(logits, 1) == labels)))


@pytest.mark.slow
def test_cli_sweep_records_the_measured_accuracy_then_resumes(capsys, tmp_path, monkeypatch):
    """`lars-jax sweep` over optimizer={lars,sgd} with real training runs (MLP, 74 test
    examples: eval batches 32, 32, 10): each run's config carries the flags, its
    recorded summary and the report hold the test accuracy and loss of a NumPy
    evaluation of that run's final parameters, and a second identical command retrains
    nothing.

    Catches: results or report rows attached to the wrong run (the two runs end with
    different accuracies, checked), a flag not passed to the trainer, a summary recorded
    from an earlier evaluation or another run, and a resumed sweep that retrains."""
    import jax

    from lars_jax.train import train_with_state

    data = tiny_data(256, 74, 6)
    finals = {}

    def train_and_keep_state(config):
        summary, state = train_with_state(config, data=data)
        finals[config.optimizer] = (config, jax.device_get(state))
        return summary

    monkeypatch.setattr(cli, "_train_fn", lambda: train_and_keep_state)
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "mlp1", "--width", "0.0625", "--batch-size", "32",
            "--epochs", "2", "--warmup-epochs", "0", "--num-devices", "1",
            "--learning-rate", "2.0", "--eval-batch-size", "32", "--dtype", "float32",
            "--checkpoint-every-steps", "-1", "--no-progress",
            "--grid", "optimizer=lars,sgd", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    rows = {r["config"]["optimizer"]: r
            for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == sorted(finals) == ["lars", "sgd"]
    report = (out / "report.md").read_text()
    accuracies = []
    for opt, row in rows.items():
        config, state = finals[opt]
        assert (config.model, config.width, config.batch_size, config.epochs,
                config.warmup_epochs, config.learning_rate, config.eval_batch_size) == (
                    "mlp1", 0.0625, 32, 2.0, 0.0, 2.0, 32)
        assert row["status"] == "done" and row["summary"]["steps"] == 16  # 2 x 256 / 32
        run_dir = out / f"optimizer={opt}"
        assert config.workdir == str(run_dir)
        assert (run_dir / "curves.png").stat().st_size > 1000  # the trainer's plot_run
        loss, acc = _numpy_eval(config, state, data)
        np.testing.assert_allclose(row["summary"]["test_loss"], loss, rtol=1e-5)
        np.testing.assert_allclose(row["summary"]["test_accuracy"], acc, rtol=0, atol=1e-9)
        assert f"| optimizer={opt} | {opt} | done | {acc:.4g} |" in report
        accuracies.append(acc)
    assert accuracies[0] != accuracies[1]  # so swapped rows would be seen

    calls_before = dict(finals)
    finals.clear()
    assert cli.main(argv) == 0
    assert "done, skipped" in capsys.readouterr().err
    assert finals == {} and calls_before  # nothing retrained
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
