"""Tests for ``lars-jax advise`` (lars_jax/runs/advise.py) and the train step's
``log_noise_scale`` statistics it reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lars_jax.runs import advise as adv
from lars_jax.runs import cli

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- calibration


def test_packaged_calibration_is_generated_from_the_committed_summary():
    summary = json.loads((ROOT / adv.SUMMARY_FILE).read_text())
    packaged = adv.load_calibration()
    assert packaged == json.loads(json.dumps(adv.calibration_from_summary(summary)))
    assert packaged["criterion_sha"] == summary["criterion_sha"]
    # independently: the pre-registered target's B_crit over the mean of its seeds' B_simple
    fit = summary["fits"][next(k for k in summary["fits"]
                               if math.isclose(float(k), packaged["target_error"]))]
    b_simple = sum(fit["b_simple"]) / len(fit["b_simple"])
    assert math.isclose(packaged["ratio"], fit["b_crit"] / b_simple, rel_tol=1e-9)
    assert packaged["ratio_lo"] < packaged["ratio"] < packaged["ratio_hi"]


def test_calibration_refuses_a_summary_without_a_usable_calibration():
    with pytest.raises(ValueError, match="no usable calibration"):
        adv.calibration_from_summary({"fits": {}, "calibration": {"usable": False,
                                                                   "why": "censored"}})
    with pytest.raises(ValueError, match="no usable calibration"):
        adv.calibration_from_summary({"fits": {}})


# --------------------------------------------------------------------------- batch advice


def test_batch_advice_by_hand():
    from lars_jax.train import TrainConfig

    config = TrainConfig(learning_rate=0.1, base_batch_size=64, epochs=2)
    rows = {r["batch_size"]: r for r in adv.batch_advice(1000.0, config, num_train=6400)}
    assert sorted(rows) == [64, 128, 256, 512, 1024, 2048]  # B_crit/8=125 -> 64; 4 B_crit cap
    r = rows[512]
    assert math.isclose(r["steps_over_min"], 1 + 1000 / 512)
    assert math.isclose(r["examples_over_min"], 1 + 512 / 1000)
    assert math.isclose(r["lr_linear"], 0.8) and math.isclose(r["lr_sqrt"], 0.1 * math.sqrt(8))
    assert r["warmup_steps"] == 2  # 5% of ceil(2 * 6400 / 512) = 25 steps, rounded up
    assert rows[64]["warmup_steps"] == 0  # the base batch: lr not raised, no warmup
    assert [b for b, r in rows.items() if r["recommended"]] == [512]  # in [B_crit/2, B_crit]


def test_unresolved_noise_scale_gives_no_batch_advice():
    from lars_jax.train import TrainConfig

    rng = np.random.default_rng(0)
    series = {"step": np.arange(20), "trace_sigma": rng.uniform(1, 2, 20),
              "grad_sq_norm": rng.uniform(-1.0, -0.5, 20), "loss": np.ones(20)}
    advice = adv._advice(series, TrainConfig(), 60000, 0.9)
    assert math.isinf(advice["b_simple"]) and advice["batches"] == []
    assert "no batch advice" in adv.format_advice({"estimator": "per_example", **advice})


def test_bad_options_refused_before_compute():
    from lars_jax.train import TrainConfig

    for kwargs, flag in (({"steps": 3}, "--steps"), ({"max_seconds": 0}, "--max-seconds"),
                         ({"ema": 1.0}, "--ema")):
        with pytest.raises(ValueError, match=flag):
            adv.advise(TrainConfig(), **kwargs)


# --------------------------------------------------------------------------- the step


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x.reshape(x.shape[0], -1))))


@pytest.mark.parametrize("accum", [1, 2])
def test_step_noise_metrics_match_vmap_reference(accum):
    from lars_jax.train.step import StepOptions, init_train_state, make_train_step

    model = _MLP()
    x = jax.random.normal(jax.random.key(0), (8, 5))
    y = jnp.arange(8) % 3
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]  # eagerly: op by op
    tx = optax.sgd(0.1)
    step = make_train_step(model, tx, StepOptions(num_classes=3, grad_accum_steps=accum,
                                                  log_noise_scale=True))
    _, m = jax.jit(step)(init_train_state(params, {}, tx), x, y)

    def loss(p, a, b):
        logits = model.apply({"params": p}, a[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, b[None])[0]

    per_ex = jax.jit(jax.vmap(jax.grad(loss), (None, 0, 0)))(params, x, y)
    g = np.concatenate([np.asarray(v, np.float64).reshape(8, -1)
                        for v in jax.tree.leaves(per_ex)], 1)
    trace = np.sum((g - g.mean(0)) ** 2) / 7  # two-pass sample variance
    np.testing.assert_allclose(float(m["noise_trace_sigma"]), trace, rtol=1e-4)
    mean = g.mean(0)
    np.testing.assert_allclose(float(m["noise_grad_sqnorm"]), mean @ mean - trace / 8,
                               rtol=1e-3, atol=1e-6)


def test_data_parallel_step_gives_the_one_device_estimates(devices: int = 2, accum: int = 2):
    """Without normalisation the global batch's gradient and per-example norms do not depend
    on how it is split: the estimates over devices (pmean of mean_i |g_i|^2, global B) equal
    those of one device."""
    from lars_jax.train import TrainConfig
    from lars_jax.train.build import build

    data = _tiny_data()
    out = []
    for n, k in ((1, 1), (devices, accum)):
        config = TrainConfig(model="mlp1", width=16, norm="none", batch_size=32, epochs=1,
                             num_devices=n, grad_accum_steps=k, progress=False,
                             dtype="float32")
        run = build(config, data, noise_scale=True)
        _, m = run.train_step(run.place(run.state), run.images, run.labels, np.int32(0))
        out.append({k: float(m[k]) for k in ("noise_trace_sigma", "noise_grad_sqnorm")})
    scale = abs(out[0]["noise_trace_sigma"])  # |G|^2 = |g_B|^2 - tr/B cancels: atol by tr
    for key in out[0]:
        np.testing.assert_allclose(out[1][key], out[0][key], rtol=1e-4, atol=1e-5 * scale)


# --------------------------------------------------------------------------- end to end


def _tiny_data(*_args, **_kwargs):
    from lars_jax.train import Data

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (320, 12, 12, 1), dtype=np.uint8)
    y = (x[:, :6].mean((1, 2, 3)) > x[:, 6:].mean((1, 2, 3))).astype(np.int32)
    return Data(x[:256], y[:256], x[256:], y[256:], 2, 0.5, 0.25)


def test_estimator_choice():
    from lars_jax.train import TrainConfig

    none, bn = TrainConfig(norm="none"), TrainConfig(norm="batch", grad_accum_steps=2)
    assert adv.estimator_for(none, 1) == "per_example"
    assert adv.estimator_for(none, 2, "two_batch") == "two_batch"  # 2 devices: 2 groups
    assert adv.estimator_for(bn, 1) == "two_batch"
    assert adv.estimator_for(bn, 1, "two_batch") == "two_batch"
    with pytest.raises(ValueError, match="--estimator=per_example"):
        adv.estimator_for(bn, 4, "per_example")
    with pytest.raises(ValueError, match="needs >= 2 gradient groups, got 1"):
        adv.estimator_for(none, 1, "two_batch")
    with pytest.raises(ValueError, match="--estimator='both'"):
        adv.estimator_for(none, 1, "both")


def _patch_data(monkeypatch, tmp_path):
    import importlib

    monkeypatch.setattr(importlib.import_module("lars_jax.train.build"), "load_data", _tiny_data)
    monkeypatch.setattr(importlib.import_module("lars_jax.data.sources"), "check_available",
                        lambda *a: True)
    monkeypatch.setenv("LARS_JAX_DATA_DIR", str(tmp_path / "data"))


def test_cli_advise_end_to_end(tmp_path, monkeypatch, capsys):
    _patch_data(monkeypatch, tmp_path)
    work = tmp_path / "adv"
    rc = cli.main(["advise", "--model", "mlp1", "--width", "16", "--norm", "none",
                   "--batch-size", "32", "--grad-accum-steps", "2", "--epochs", "2",
                   "--steps", "12", "--num-devices", "1", "--workdir", str(work),
                   "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "B_simple =" in out and "predicted critical batch" in out and "recommended" in out
    advice = json.loads((work / "advice.json").read_text())
    assert (work / "b_simple.png").stat().st_size > 0
    s = advice["series"]
    assert len(s["step"]) == 12 and s["step"] == list(range(12))
    # the advice's B_simple is the ratio of the bias-corrected EMAs of the series
    assert advice["ema"] == 0.98  # the default
    w = 0.98 ** np.arange(11, -1, -1)
    b = (w @ np.asarray(s["trace_sigma"])) / (w @ np.asarray(s["grad_sq_norm"]))
    assert math.isclose(advice["b_simple"], b, rel_tol=1e-4)
    assert math.isclose(advice["b_crit"], advice["calibration"]["ratio"] * b, rel_tol=1e-4)
    assert "two_batch_b_simple" in advice  # 2 accumulation groups: both estimators
    # --estimator two_batch on the same run (same steps): the step's two accumulation groups
    # against the whole batch; its B_simple is the cross-check printed above, which
    # diagnostics.noise_scale_series computed from the same steps' statistics
    rc = cli.main(["advise", "--model", "mlp1", "--width", "16", "--norm", "none",
                   "--batch-size", "32", "--grad-accum-steps", "2", "--epochs", "2",
                   "--steps", "12", "--num-devices", "1", "--workdir", str(tmp_path / "two"),
                   "--no-progress", "--estimator", "two_batch"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "estimator: two_batch" in out and "two-batch estimator on the same" not in out
    two = json.loads((tmp_path / "two" / "advice.json").read_text())
    assert two["estimator"] == "two_batch" and "two_batch_b_simple" not in two
    assert math.isclose(two["b_simple"], advice["two_batch_b_simple"], rel_tol=1e-3)


@pytest.mark.parametrize("argv,needle", [
    (["--steps", "3"], "--steps=3"),
    (["--ema", "2"], "--ema=2.0"),
    (["--batch-size", "0"], "batch_size"),
    (["--norm", "batch", "--num-devices", "1", "--grad-accum-steps", "1"], "norm='batch'"),
    (["--norm", "batch", "--num-devices", "1", "--grad-accum-steps", "2", "--estimator",
      "per_example"], "--estimator=per_example"),
    (["--norm", "none", "--num-devices", "1", "--grad-accum-steps", "1", "--estimator",
      "two_batch"], "--estimator=two_batch"),
])
def test_cli_advise_bad_options_one_line(argv, needle, tmp_path, capsys):
    rc = cli.main(["advise", "--workdir", str(tmp_path / "w"), *argv])
    _, err = capsys.readouterr()
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1



def test_cli_advise_unknown_estimator_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["advise", "--workdir", str(tmp_path / "w"), "--estimator", "three_batch"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "--estimator: invalid choice: 'three_batch'" in err.splitlines()[0]
