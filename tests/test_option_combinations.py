"""Every option combination either does what it says or is refused before compute (issue 19).

The covering test enumerates pairs of non-default option values on the issue's small run
(mlp2, 512 training examples, batch 64, 1 epoch) and checks each at config level: it is
refused with one line naming a field, or it is accepted and then (checked here
independently of `TrainConfig.validate`) its BatchNorm groups have >= 2 examples, its
``steps_per_call`` is used by the loop's own stop rule, its periodic evaluation happens,
its learning rates are finite, and every value that has no effect was warned about. A few
tiny real runs check that accepted combinations train to a finite result. The table
`APPLIES` is checked against the code: where it says a value has no effect, the optimizer,
schedule or model built with it is identical to the default's, and where it says it has
one, they differ.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_data import tiny_data

from lars_jax.train import TrainConfig
from lars_jax.train.config import ALWAYS_APPLIES, APPLIES, ConfigWarning

# the command: C = --model mlp2 --train-subset 512 --test-subset 256 --batch-size 64
# --epochs 1 (8 simulated devices)
BASE = dict(model="mlp2", train_subset=512, test_subset=256, batch_size=64, epochs=1.0,
            progress=False, plot=False)
DEVICES = 8

OPTION_VALUES: dict[str, list] = {
    "max_skipped_fraction": [0.5],
    "input_threads": [2],
    "optimizer": ["sgd", "larc", "clars"],
    "norm": ["group", "none"],
    "bn_span": ["global", "ghost"],
    "bn_ghost_size": [1, 4],
    "zero_init_last_bn": [True],
    "trust_coefficient": [0.001],
    "denominator": ["optax"],
    "clip": [True],
    "clars_granularity": ["device", "micro_batch"],
    "schedule": ["poly2", "linear", "constant", "step", "onecycle", "mlperf"],
    "end_learning_rate": [0.01],
    "warmup_start": ["base"],
    "warmup_epochs": [0.0, 0.5],
    "lr_scaling": ["sqrt", "none"],
    "base_batch_size": [32],
    "grad_accum_steps": [2, 8],
    "num_devices": [1],
    "parallel": ["pmap"],
    "steps_per_call": [2, 4, 16],
    "eval_every_epochs": [0.01, 0.5],
    "log_every_steps": [1, 3],
    "checkpoint_every_steps": [-1, 3],
    "keep_checkpoints": [1],
    "nan_policy": ["skip"],
    "dtype": ["float32"],
    "log_layer_stats": [True],
    "model": ["mlp1", "resnet8"],
    "mlperf": [True],
    "target_accuracy": [0.5],
}


def _check(cfg: TrainConfig) -> tuple[ValueError | None, list[str]]:
    """Validates `cfg` on its devices: (the refusal or None, the ConfigWarning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cfg.validate(device_count=cfg.num_devices or DEVICES)
            error = None
        except ValueError as e:
            error = e
    return error, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def _bn_group_size(cfg: TrainConfig, devices: int) -> int:
    """Examples that share one BatchNorm statistic (written out from the span's definition)."""
    micro = cfg.batch_size // cfg.grad_accum_steps  # one micro-batch over all devices
    if cfg.bn_span == "global":
        return micro
    if cfg.bn_span == "ghost":
        return cfg.bn_ghost_size
    return micro // devices


def _multi_step_calls(cfg: TrainConfig, total: int, eval_every: int) -> int:
    """How many multi-step calls the loop makes (its own stop rule, `loop.next_stop`)."""
    from lars_jax.train.loop import next_stop

    step, calls = 0, 0
    while step < total:
        stop = next_stop(step, total, cfg.log_every_steps, eval_every,
                         max(cfg.checkpoint_every_steps, 0))
        if step + cfg.steps_per_call <= stop:
            step, calls = step + cfg.steps_per_call, calls + 1
        else:
            step += 1
    return calls


def _pairs():
    values = [(f, v) for f, vs in OPTION_VALUES.items() for v in vs]
    for (fa, va), (fb, vb) in itertools.combinations(values, 2):
        if fa != fb:
            yield {fa: va, fb: vb}


def test_every_field_is_in_the_applies_table_or_always_applies():
    """A new option must say where it applies: in `APPLIES` (conditional) or in
    `ALWAYS_APPLIES`, not both; the covering test enumerates the conditional ones."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not set(APPLIES) & ALWAYS_APPLIES
    assert set(APPLIES) | ALWAYS_APPLIES == names
    assert set(APPLIES) <= set(OPTION_VALUES), "give each conditional field a test value"


@pytest.mark.slow
def test_every_option_pair_is_refused_on_one_line_or_does_what_it_says():
    """The covering matrix: every pair of the non-default values above (over 1000 configs).

    Catches a combination that is accepted but meaningless: BatchNorm over one example,
    a steps_per_call the loop can never use, a periodic evaluation that never happens,
    a non-finite or negative learning rate, or a value with no effect (by the table) that
    passes without a warning; and a refusal that is not one line naming a field."""
    from lars_jax.train.build import learning_rate_schedule

    refused = accepted = 0
    for pair in _pairs():
        cfg = TrainConfig(**{**BASE, **pair})
        error, warned = _check(cfg)
        if error is not None:
            msg = str(error)
            assert "\n" not in msg, (pair, msg)
            field = msg.partition("=")[0].removeprefix("TrainConfig.")
            assert msg.startswith("TrainConfig.") and field in TrainConfig.help(), (pair, msg)
            refused += 1
            continue
        accepted += 1
        devices = cfg.num_devices or DEVICES
        if cfg.norm == "batch":
            assert _bn_group_size(cfg, devices) >= 2, pair
        epoch_steps = 512 // cfg.batch_size
        total = round(cfg.epochs * epoch_steps)
        eval_every = round(cfg.eval_every_epochs * epoch_steps)
        if cfg.eval_every_epochs > 0:
            assert eval_every >= 1, pair
        if cfg.steps_per_call > 1 and _multi_step_calls(cfg, total, eval_every) == 0:
            assert any(m.startswith("TrainConfig.steps_per_call=") and "never used" in m
                       for m in warned), (pair, warned)
        sched = learning_rate_schedule(cfg, epoch_steps, total)
        rates = np.array([float(sched(t)) for t in range(total)])
        assert np.all(np.isfinite(rates)) and np.all(rates >= 0) and rates.max() > 0, pair
        for name in pair:
            if name in APPLIES and not APPLIES[name].applies(cfg) \
                    and pair[name] != TrainConfig.__dataclass_fields__[name].default:
                assert any(m.startswith(f"TrainConfig.{name}=") for m in warned), (pair, warned)
    assert refused >= 130 and accepted >= 900, (refused, accepted)  # 144 and 1000 now


# ----------------------------------------------------------------------------- APPLIES vs code


def _optimizer_fingerprint(cfg: TrainConfig) -> np.ndarray:
    """Two updates of the config's optimizer on a toy (matrix, bias), with a small gradient
    (||g|| / ||w|| ~ 1e-3: the LARC clip at 1 engages) and a large one (~1: it does not),
    neither parallel to the weights (so the two denominators differ)."""
    from lars_jax.train.build import make_optimizer

    tx, _ = make_optimizer(cfg, 10, 100)

    @jax.jit  # one program per config (eager, every primitive would compile on its own)
    def updates():
        params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
        out = []
        for scale in (1e-3, 1.0):
            grads = jax.tree.map(
                lambda p, s=scale: s * jax.random.normal(jax.random.key(2), p.shape), params)
            extra = {}
            if cfg.optimizer == "clars":
                extra["per_example_norms"] = jax.tree.map(
                    lambda g: jnp.full(4, jnp.linalg.norm(g)), grads)
            state = tx.init(params)
            for _ in range(2):
                u, state = tx.update(grads, state, params, **extra)
                out.append(jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(u)]))
        return jnp.concatenate(out)

    return np.asarray(updates())


def _schedule_fingerprint(cfg: TrainConfig) -> np.ndarray:
    from lars_jax.train.build import learning_rate_schedule

    sched = learning_rate_schedule(cfg, 10, 100)
    return np.array([float(sched(t)) for t in range(101)])


def _model_fingerprint(cfg: TrainConfig) -> np.ndarray:
    """Training-mode logits of the config's model on 64 fixed images."""
    from lars_jax.train.build import build_model

    model = build_model(cfg, 10, axis_name=None)
    x = jax.random.normal(jax.random.key(1), (64, 28, 28, 1))
    variables = model.init(jax.random.key(0), x[:1], train=False)
    mutable = ["batch_stats"] if "batch_stats" in variables else False
    out = model.apply(variables, x, train=True, mutable=mutable)
    return np.asarray(out[0] if mutable else out)


# field -> (test value, contexts to try, what is compared)
_EFFECT_CASES = {
    "trust_coefficient": (0.001, [dict(optimizer=o) for o in ("sgd", "lars", "larc", "clars")],
                          _optimizer_fingerprint),
    "denominator": ("optax", [dict(optimizer=o) for o in ("sgd", "lars", "larc")],
                    _optimizer_fingerprint),
    "clip": (True, [dict(optimizer=o) for o in ("sgd", "lars", "larc", "clars")],
             _optimizer_fingerprint),
    "end_learning_rate": (0.01, [dict(schedule=s) for s in
                                 ("cosine", "poly2", "linear", "constant", "step", "onecycle",
                                  "mlperf")], _schedule_fingerprint),
    "warmup_start": ("base", [dict(schedule=s, warmup_epochs=w, batch_size=512)
                              for s in ("cosine", "step", "onecycle") for w in (0.0, 1.0)],
                     _schedule_fingerprint),
    "bn_ghost_size": (4, [dict(norm="batch", bn_span=s) for s in ("device", "ghost")]
                      + [dict(norm="group")], _model_fingerprint),
    "zero_init_last_bn": (True, [dict(norm=n) for n in ("batch", "group", "none")],
                          _model_fingerprint),
}


@pytest.mark.parametrize("name", sorted(_EFFECT_CASES))
def test_applies_table_agrees_with_what_the_code_builds(name):
    """Where `APPLIES` says a value has no effect, the optimizer updates, the learning
    rates or the model's training-mode outputs built with it equal the default's bit for
    bit; where it says it applies, they differ.

    Catches a table entry that hides a real effect, or a field that silently stopped
    applying (e.g. clip ignored by clars, end_learning_rate ignored by a schedule)."""
    value, contexts, fingerprint = _EFFECT_CASES[name]
    base = TrainConfig(model="mlp1", width=1 / 16, bn_ghost_size=32, epochs=10.0,
                       warmup_epochs=1.0)
    seen = set()
    for ctx in contexts:
        cfg = base.replace(**ctx)
        changed = cfg.replace(**{name: value})
        differs = not np.array_equal(fingerprint(cfg), fingerprint(changed))
        assert differs == APPLIES[name].applies(changed), (name, ctx)
        seen.add(differs)
    assert seen == {True, False}, f"{name}: the contexts must cover both cases"


# ----------------------------------------------------------------------------- items


def _refusal(**changes) -> str:
    error, _ = _check(TrainConfig(**{**BASE, **changes}))
    assert error is not None, changes
    return str(error)


def _warnings(**changes) -> list[str]:
    error, warned = _check(TrainConfig(**{**BASE, **changes}))
    assert error is None, error
    return warned


def test_clars_with_optax_denominator_is_refused_before_data(tmp_path):
    """Item 2: it passed validation, --print-config and sweep --dry-run and failed after
    data loading. Now the config, the CLI's --print-config and the sweep's dry run (neither
    loads data) refuse it with one line and exit 2."""
    from lars_jax.runs.cli import main

    assert _refusal(optimizer="clars", denominator="optax").startswith(
        "TrainConfig.denominator='optax'")
    rc = main(["train", "--optimizer", "clars", "--denominator", "optax", "--print-config",
               "--workdir", str(tmp_path)])
    assert rc == 2
    rc = main(["sweep", "--grid", "optimizer=lars,clars", "--denominator", "optax",
               "--dry-run", "--out", str(tmp_path / "sweep")])
    assert rc == 2 and not (tmp_path / "sweep" / "results.jsonl").exists()


def test_end_learning_rate_is_refused_where_the_schedule_has_a_fixed_end():
    """Item 3: step, onecycle and constant have their own end and refuse end_learning_rate;
    the ends (at the step after the last) are the documented ones, computed by hand:
    step /10 twice = peak/100; onecycle peak / (div 25 x final_div 1e4) = peak/250000;
    constant = peak. The decaying schedules reach end_learning_rate exactly."""
    from lars_jax.train.build import learning_rate_schedule

    for schedule in ("step", "onecycle", "constant"):
        assert _refusal(schedule=schedule, end_learning_rate=0.01).startswith(
            "TrainConfig.end_learning_rate=0.01")
    peak = 0.5 * 512 / 256
    cfg = TrainConfig(batch_size=512, learning_rate=0.5, warmup_epochs=1.0, epochs=10.0)
    ends = {"step": peak / 100, "onecycle": peak / 250_000, "constant": peak}
    for schedule, want in ends.items():
        got = float(learning_rate_schedule(cfg.replace(schedule=schedule), 10, 100)(100))
        assert got == pytest.approx(want, rel=1e-5), schedule
    for schedule in ("cosine", "poly2", "linear", "mlperf"):
        c = cfg.replace(schedule=schedule, end_learning_rate=0.01,
                        warmup_start="zero")
        c.validate()
        assert float(learning_rate_schedule(c, 10, 100)(100)) == pytest.approx(0.01, rel=1e-5)


@pytest.mark.parametrize("changes, field", [
    (dict(num_devices=8, grad_accum_steps=8), "batch_size"),      # device span, 1 example
    (dict(bn_span="ghost", bn_ghost_size=1), "bn_ghost_size"),
    (dict(bn_span="global", batch_size=8, grad_accum_steps=8, num_devices=1),
     "batch_size"),
])
def test_batch_norm_over_one_example_is_refused(changes, field):
    """Batch norm over one example outputs its bias only (the loss stays at ln 10)."""
    assert _refusal(**changes).startswith(f"TrainConfig.{field}=")
    if field == "batch_size":  # the same without batch norm is fine
        no_bn = {**BASE, **changes, "norm": "none", "bn_span": "device"}
        assert _check(TrainConfig(**no_bn))[0] is None


def test_batch_norm_over_one_example_really_outputs_the_bias():
    """Why the refusal: flax BatchNorm in training mode over one example maps every
    input to its bias (variance 0), whatever the input."""
    import flax.linen as nn

    bn = nn.BatchNorm(use_running_average=False)
    x = jax.random.normal(jax.random.key(0), (1, 5))
    variables = bn.init(jax.random.key(1), x)
    y, _ = bn.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y), 0.0, atol=1e-3)  # the bias is 0 at init


@pytest.mark.parametrize("changes, field", [
    (dict(norm="none", bn_span="global"), "bn_span"),
    (dict(norm="group", bn_span="global"), "bn_span"),
    (dict(norm="group", bn_span="ghost"), "bn_span"),
    (dict(norm="none", zero_init_last_bn=True), "zero_init_last_bn"),
    (dict(schedule="constant", end_learning_rate=0.01), "end_learning_rate"),
    (dict(eval_every_epochs=0.01), "eval_every_epochs"),            # 0.08 steps
])
def test_meaningless_combinations_are_refused_on_one_line(changes, field):
    msg = _refusal(**changes)
    assert msg.startswith(f"TrainConfig.{field}=") and "\n" not in msg


@pytest.mark.parametrize("changes, field", [
    (dict(bn_span="device", bn_ghost_size=8), "bn_ghost_size"),
    (dict(optimizer="sgd", clars_granularity="device"), "clars_granularity"),
    (dict(optimizer="lars", clars_granularity="micro_batch", grad_accum_steps=2),
     "clars_granularity"),
    (dict(optimizer="sgd", clip=True), "clip"),
    (dict(optimizer="larc", clip=True), "clip"),
    (dict(optimizer="sgd", denominator="optax"), "denominator"),
    (dict(optimizer="sgd", trust_coefficient=0.001), "trust_coefficient"),
    (dict(warmup_start="base", warmup_epochs=0.5), "warmup_start"),  # peak 0.125 < 0.5
    (dict(warmup_start="base", warmup_epochs=0.0), "warmup_start"),
    (dict(steps_per_call=4), "steps_per_call"),                      # log every 10
    # a K no call can use (a speed setting: the run is the same, in single steps)
    (dict(steps_per_call=16), "steps_per_call"),                     # log every 10 steps
    (dict(steps_per_call=9, log_every_steps=16), "steps_per_call"),  # the run has 8 steps
    (dict(checkpoint_every_steps=-1, keep_checkpoints=5), "keep_checkpoints"),
])
def test_values_a_sweep_base_may_share_are_warned_about(changes, field):
    """Settings of another optimizer, span or schedule (an optimizer sweep shares
    trust_coefficient in its base config, as the experiments do) are accepted with a
    one-line ConfigWarning naming the field."""
    warned = _warnings(**changes)
    assert [m for m in warned if m.startswith(f"TrainConfig.{field}=")], warned
    assert all("\n" not in m for m in warned)


def test_defaults_and_meaningful_settings_give_no_warning():
    assert _warnings() == []
    assert _warnings(optimizer="clars", clip=True, clars_granularity="device") == []
    assert _warnings(warmup_start="base", warmup_epochs=0.5, base_batch_size=32) == []
    assert _warnings(steps_per_call=5) == []  # log every 10, 8 steps: one call of 5


def test_cli_prints_a_config_warning_on_one_line(tmp_path, capsys):
    from lars_jax.runs.cli import main

    rc = main(["train", "--optimizer", "sgd", "--trust-coefficient", "0.001",
               "--print-config", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 0
    lines = [line for line in err.splitlines() if "trust_coefficient" in line]
    assert lines == ["lars-jax: warning: TrainConfig.trust_coefficient=0.001: has no effect: "
                     "it applies only with optimizer lars, larc or clars (leave it at 0.02)"]


def test_larc_clip_engages_exactly_when_grad_to_weight_ratio_is_below_tc_minus_wd():
    """The docs' LARC note: with the paper denominator the ratio tc|w| / (|g| + wd|w|)
    exceeds 1, so the clip engages, iff |g|/|w| < tc - wd (0.0195 at the defaults);
    at tc <= wd it never does. Checked on one tensor just above and below the bound."""
    from lars_jax import alias

    tc, wd = 0.02, 5e-4
    w = {"w": jnp.ones((4, 4))}
    for rel, engages in [((tc - wd) * 1.01, False), ((tc - wd) * 0.99, True)]:
        g = {"w": rel * jnp.ones((4, 4))}
        kw = dict(learning_rate=1.0, weight_decay=wd, trust_coefficient=tc, momentum=0.0)
        plain = alias.lars(**kw)
        larc = alias.larc(**kw)
        u1, _ = plain.update(g, plain.init(w), w)
        u2, _ = larc.update(g, larc.init(w), w)
        assert (not np.array_equal(u1["w"], u2["w"])) == engages, rel


# ----------------------------------------------------------------------------- BN + accumulation


def test_running_bn_statistics_are_updated_once_per_step_from_the_micro_batch_mean():
    """With grad_accum_steps=2 the running statistics after one step are
    m r0 + (1 - m) mean_i(s_i): flax's own update of each micro-batch from the same r0,
    averaged (the rule across devices), not two chained updates m^2 r0 + ..."""
    import flax.linen as nn
    import optax

    from lars_jax.train.step import StepOptions, init_train_state, make_train_step

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            x = nn.Dense(6)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            return nn.Dense(3)(x)

    model = Net()
    x = jax.random.normal(jax.random.key(0), (8, 5)) * 3 + 1
    y = jnp.arange(8) % 3
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)
    tx = optax.sgd(0.1)
    state = init_train_state(variables["params"], variables["batch_stats"], tx)
    step = make_train_step(model, tx, StepOptions(num_classes=3, grad_accum_steps=2))
    new, _ = jax.jit(step)(state, x, y)

    @jax.jit
    def want_stats(variables, x):
        def flax_update(xs):
            _, upd = model.apply(variables, xs, train=True, mutable=["batch_stats"])
            return upd["batch_stats"]

        return jax.tree.map(lambda a, b: (a + b) / 2, flax_update(x[:4]), flax_update(x[4:]))

    want = want_stats(variables, x)
    for got, exp in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- real runs


def _run(tmp_path, name, **kw):
    from lars_jax.train import train_with_state

    cfg = TrainConfig(**{**dict(model="mlp1", width=1 / 16, batch_size=32, epochs=1.0,
                                warmup_epochs=0.0, learning_rate=0.5, dtype="float32",
                                checkpoint_every_steps=-1, plot=False, progress=False,
                                log_every_steps=2, eval_batch_size=64,
                                workdir=str(tmp_path / name)), **kw})
    return train_with_state(cfg, data=tiny_data(128, 64, 8))


@pytest.mark.slow
def test_accumulation_gives_the_running_statistics_of_as_many_devices(tmp_path):
    """A real run: grad_accum_steps=2 on 1 device and 2 devices with 1 micro-batch each
    (bn_span="device": 16 examples per statistic in both) end with the same parameters,
    BatchNorm running statistics and test loss (float32 rounding)."""
    s1, st1 = _run(tmp_path, "accum", num_devices=1, grad_accum_steps=2, norm="batch")
    s2, st2 = _run(tmp_path, "devices", num_devices=2, grad_accum_steps=1, norm="batch")
    for a, b in zip(jax.tree.leaves(st1.batch_stats), jax.tree.leaves(st2.batch_stats),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert s1["test_loss"] == pytest.approx(s2["test_loss"], rel=1e-4)


@pytest.mark.parametrize("name, kw", [
    ("clars_clip_ghost", dict(optimizer="clars", clip=True, bn_span="ghost", bn_ghost_size=4,
                              num_devices=2, grad_accum_steps=2,
                              clars_granularity="micro_batch")),
    ("larc_global_onecycle", dict(optimizer="larc", bn_span="global", num_devices=4,
                                  schedule="onecycle", warmup_epochs=0.5)),
    ("sgd_group_steps", dict(optimizer="sgd", norm="group", zero_init_last_bn=True,
                             steps_per_call=2, schedule="step", momentum=0.9)),
])
def test_accepted_combinations_run_to_a_finite_result(tmp_path, name, kw):
    summary, _ = _run(tmp_path, name, **kw)
    assert summary["status"] == "ok" and summary["steps"] == 4
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert math.isfinite(summary[key]), (key, summary[key])
