"""End-to-end `train()`: metrics, steps per call, NaN policy, two processes.

The job that the multi-host test starts as subprocesses is in `_train_jobs`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _train_jobs import tiny_config, tiny_data
from _xla_env import xla_flags

REPO = Path(__file__).resolve().parents[1]
JOBS = str(Path(__file__).with_name("_train_jobs.py"))


def _final_params(workdir):
    import orbax.checkpoint as ocp

    ck = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    restored = ocp.StandardCheckpointer().restore(ck / str(last) / "state")
    import jax

    return last, [np.asarray(v) for v in jax.tree.leaves(restored["params"])]


def _pythonpath():
    return os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])


def test_metrics_summary_and_layer_stats(tmp_path):
    """One in-process bfloat16 run (an MLP with BatchNorm) on 2 of the 8 test devices with
    CLARS per device: the JSONL rows hold loss, accuracy, lr, images/s, per-layer trust
    ratios and norms, Page's diagnostics, the noise-scale statistics; eval rows and
    summary.json exist; the effective lr follows the warmup; parameters and optimizer state
    stay float32."""
    import jax
    import jax.numpy as jnp

    from lars_jax.train import train_with_state

    cfg = tiny_config(tmp_path, model="mlp1", optimizer="clars", clars_granularity="device",
                      log_layer_stats=True, log_diagnostics=True, log_every_steps=1,
                      checkpoint_every_steps=-1, eval_every_epochs=1.0, dtype="bfloat16")
    summary, state = train_with_state(cfg, data=tiny_data())
    # mixed precision: bfloat16 compute, float32 parameters and optimizer state
    assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == list(range(1, 17))
    assert [r["step"] for r in evals] == [8, 16]
    last = train_rows[-1]
    for key in ("loss", "accuracy", "lr", "images_per_s", "grad_sqnorm_small",
                "grad_sqnorm_big", "batch_small", "batch_big"):
        assert key in last, key
    assert last["batch_small"] == 16 and last["batch_big"] == 32
    assert any(k.startswith("trust_ratio/") and k.endswith("kernel") for k in last)
    assert any(k.startswith("weight_norm/") for k in last)
    assert any(k.startswith("diag/") and k.endswith("/w_sqnorm") for k in last)
    # warmup over 0.5 epochs = 4 steps from 0 to lr * 32 / 256, then cosine decay
    peak = cfg.learning_rate * cfg.batch_size / cfg.base_batch_size
    lrs = [r["lr"] for r in train_rows]
    np.testing.assert_allclose(lrs[:5], [0, peak / 4, peak / 2, 3 * peak / 4, peak], rtol=1e-5)
    assert lrs[-1] < lrs[5] < peak
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["test_accuracy"] == summary["test_accuracy"] == evals[-1]["test_accuracy"]
    assert summary["steps"] == 16 and summary["status"] == "ok"
    assert not (tmp_path / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())


def test_steps_per_call_gives_the_same_run_with_fewer_dispatches(tmp_path):
    """steps_per_call=3 (lax.scan over steps) ends with the parameters of one step per call
    and logs, evaluates and checkpoints at the same steps (which are not multiples of 3)."""
    import jax

    from lars_jax.train import train_with_state
    from lars_jax.train.loop import next_stop

    assert next_stop(0, 16, 4, 8, 0) == 4 and next_stop(5, 16, 4, 6, 0) == 6
    assert next_stop(13, 16, 10, 0, 7) == 14 and next_stop(14, 16, 10, 0, 0) == 16
    kw = dict(log_every_steps=4, eval_every_epochs=1.0, checkpoint_every_steps=5,
              num_devices=2, optimizer="lars", model="mlp1")
    out = {}
    for k in (1, 3):
        wd = tmp_path / f"k{k}"
        summary, state = train_with_state(tiny_config(wd, steps_per_call=k, **kw),
                                          data=tiny_data())
        rows = [json.loads(line) for line in (wd / "metrics.jsonl").open()]
        ckpts = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
        out[k] = (summary, jax.device_get(state.params), rows, ckpts)
    (s1, p1, r1, c1), (s3, p3, r3, c3) = out[1], out[3]
    assert s1["steps"] == s3["steps"] == 16
    assert [(r["kind"], r["step"]) for r in r1] == [(r["kind"], r["step"]) for r in r3]
    assert c1 == c3 and c1  # checkpoints at steps 15 and 16 (keep=3: 5, 10, 15, 16 -> last 3)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["loss"] for r in r1 if r["kind"] == "train"],
                               [r["loss"] for r in r3 if r["kind"] == "train"], rtol=1e-5)
    from lars_jax.train import TrainConfig

    with pytest.raises(ValueError, match="steps_per_call"):
        TrainConfig(steps_per_call=2, parallel="pmap").validate()


def test_nan_stop_names_the_step_and_checkpoint_and_skip_counts(tmp_path):
    from lars_jax.train import train
    from lars_jax.train.loop import NonFiniteError

    cfg = tiny_config(tmp_path / "stop", model="mlp1", optimizer="sgd", learning_rate=1e36,
                      warmup_epochs=0.0, schedule="constant", checkpoint_every_steps=1,
                      log_every_steps=1, norm="none")
    with pytest.raises(NonFiniteError,
                       match=r"non-finite loss, gradients or parameters at step (\d+)") as e:
        train(cfg, data=tiny_data())
    assert "Last good checkpoint" in str(e.value)
    saved = json.loads((tmp_path / "stop" / "summary.json").read_text())
    assert saved["status"] == "nonfinite" and saved["nonfinite_step"] >= 1
    # the skip run is never resumed: no checkpoints (16 saves of the stop run's every-step
    # setting would be most of its time)
    summary = train(cfg.replace(workdir=str(tmp_path / "skip"), nan_policy="skip",
                                max_skipped_fraction=1.0, checkpoint_every_steps=-1),
                    data=tiny_data())
    assert summary["skipped_steps"] > 0 and summary["steps"] == 16


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    """jax.distributed with a localhost coordinator: 2 processes x 2 CPU devices run a few
    steps; both end with the same parameters, equal (atol 1e-5: cross-process reduction
    order) to one process with 4 devices (this one, on 4 of the 8 test devices: the job's
    config, without checkpoints). Checkpoints are written once."""
    import socket

    import jax

    from lars_jax.train import train_with_state

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=_pythonpath(), JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(2))
    procs, logs = [], []
    for pid in (0, 1):
        # output to files, not pipes: a full pipe would block one process, and with it the
        # other's jax.distributed shutdown barrier
        logs.append(tmp_path / f"mh-{pid}.log")
        with open(logs[-1], "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, JOBS, "multihost", str(tmp_path / "mh"), str(port),
                 str(pid), "2"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    # the one-process run meanwhile, here (the multihost job's config for one process)
    _, state = train_with_state(tiny_config(tmp_path / "single", model="mlp1", num_devices=4,
                                            epochs=1.0, checkpoint_every_steps=-1),
                                data=tiny_data())
    single = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(state.params)])
    for p in procs:
        p.wait(timeout=600)
    outs = [log.read_text() for log in logs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]

    def grab(out, tag):
        line = next(ln for ln in out.splitlines() if ln.startswith(tag))
        return json.loads(line[len(tag) + 1:])

    p0, p1 = (np.asarray(grab(o, "PARAMS")) for o in outs)
    assert grab(outs[0], "SUMMARY") == {"num_processes": 2, "num_devices": 4, "steps": 8}
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_allclose(p0, single, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "mh" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["4", "6", "8"]
