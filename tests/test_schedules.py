"""Tests of the learning-rate rules and schedules in lars_jax.schedules."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import lars_jax

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate))


def _values(schedule, steps) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(list(steps), jnp.int32)), np.float64)


@given(base=st.floats(0.0, 10.0), b=st.integers(1, 2**16), b0=st.integers(1, 1024))
@SETTINGS
def test_scaling_rules(base, b, b0):
    assert math.isclose(lars_jax.linear_scaling(base, b, b0), base * b / b0, rel_tol=1e-12)
    assert math.isclose(lars_jax.sqrt_scaling(base, b, b0), base * math.sqrt(b / b0),
                        rel_tol=1e-12)
    # Doubling the batch doubles the linear rate and multiplies the sqrt rate by sqrt(2).
    assert math.isclose(lars_jax.linear_scaling(base, 2 * b, b0),
                        2 * lars_jax.linear_scaling(base, b, b0), rel_tol=1e-12)
    assert math.isclose(lars_jax.sqrt_scaling(base, 4 * b, b0),
                        2 * lars_jax.sqrt_scaling(base, b, b0), rel_tol=1e-12)


def test_goyal_gradual_warmup_then_step_decay():
    k, epoch = 32, 10
    after = optax.piecewise_constant_schedule(0.1 * k, {30 * epoch: 0.1, 60 * epoch: 0.1})
    sched = lars_jax.gradual_warmup(0.1, 0.1 * k, warmup_steps=5 * epoch, after=after)
    v = _values(sched, [0, 25, 50, 51, 50 + 30 * epoch - 1, 50 + 30 * epoch, 50 + 60 * epoch])
    np.testing.assert_allclose(v, [0.1, 0.1 + (3.2 - 0.1) / 2, 3.2, 3.2, 3.2, 0.32, 0.032],
                               rtol=1e-5)
    const = lars_jax.gradual_warmup(0.0, 1.0, warmup_steps=4)
    np.testing.assert_allclose(_values(const, [0, 1, 2, 4, 100]), [0, 0.25, 0.5, 1, 1],
                               rtol=1e-6)
    no_warm = lars_jax.gradual_warmup(0.1, 1.0, warmup_steps=0)
    np.testing.assert_allclose(_values(no_warm, [0, 7]), [1.0, 1.0])


@given(peak=st.floats(0.1, 30.0), warm=st.integers(0, 20), extra=st.integers(1, 100),
       end=st.sampled_from([0.0, 1e-4]), power=st.sampled_from([1.0, 2.0]))
@SETTINGS
def test_mlperf_lars_schedule_formula(peak, warm, extra, end, power):
    total = warm + extra
    sched = lars_jax.mlperf_lars_schedule(peak, warm, total, end_lr=end, power=power)
    for t in sorted({0, warm // 2, warm, warm + extra // 3, total - 1, total, total + 5}):
        if t < warm:
            want = peak * t / warm
        else:
            frac = min(t - warm, extra) / extra
            want = (peak - end) * (1 - frac) ** power + end
        np.testing.assert_allclose(float(sched(t)), want, rtol=1e-5, atol=1e-7)


def test_page_piecewise_linear():
    epoch = 10
    sched = lars_jax.piecewise_linear([0, 5 * epoch, 24 * epoch], [0.0, 0.4, 0.0])
    steps = np.arange(0, 26 * epoch, 7)
    want = np.interp(steps, [0, 5 * epoch, 24 * epoch], [0.0, 0.4, 0.0])
    np.testing.assert_allclose(_values(sched, steps), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(jax.jit(sched)(jnp.int32(50))), 0.4, rtol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_onecycle_reuses_optax(kind):
    sched = lars_jax.onecycle(200, peak_lr=2.0, kind=kind)
    ref = (optax.cosine_onecycle_schedule(200, 2.0) if kind == "cosine"
           else optax.linear_onecycle_schedule(200, 2.0))
    steps = [0, 30, 60, 100, 170, 199, 200]
    np.testing.assert_allclose(_values(sched, steps), _values(ref, steps), rtol=1e-6)
    v = _values(sched, range(201))
    assert v.argmax() == 60 and math.isclose(v.max(), 2.0, rel_tol=1e-5)
    assert v[0] == pytest.approx(2.0 / 25) and v[-1] < 2.0 / 25 / 1e3


def test_schedules_drive_lars_under_jit():
    sched = lars_jax.mlperf_lars_schedule(5.0, warmup_steps=2, total_steps=6)
    tx = optax.inject_hyperparams(lars_jax.lars)(learning_rate=sched, weight_decay=1e-4)
    params = {"k": jnp.ones((2, 2))}
    state = tx.init(params)
    seen = []
    for _ in range(4):
        updates, state = jax.jit(tx.update)({"k": jnp.full((2, 2), 0.1)}, state, params)
        seen.append(float(state.hyperparams["learning_rate"]))  # the rate this step used
    np.testing.assert_allclose(seen, [0.0, 2.5, 5.0, (5.0 - 1e-4) * 0.75**2 + 1e-4], rtol=1e-5)


@pytest.mark.parametrize("fn, kwargs, name", [
    (lars_jax.linear_scaling, dict(base_lr=-0.1, batch_size=256), "base_lr"),
    (lars_jax.linear_scaling, dict(base_lr=0.1, batch_size=0), "batch_size"),
    (lars_jax.sqrt_scaling, dict(base_lr=0.1, batch_size=8, base_batch_size=-1),
     "base_batch_size"),
    (lars_jax.gradual_warmup, dict(start_lr=-1.0, peak_lr=1.0, warmup_steps=5), "start_lr"),
    (lars_jax.gradual_warmup, dict(start_lr=0.1, peak_lr=1.0, warmup_steps=-5),
     "warmup_steps"),
    (lars_jax.gradual_warmup, dict(start_lr=0.1, peak_lr=1.0, warmup_steps=5, after=3.0),
     "after"),
    (lars_jax.mlperf_lars_schedule, dict(peak_lr=-1.0, warmup_steps=1, total_steps=5),
     "peak_lr"),
    (lars_jax.mlperf_lars_schedule, dict(peak_lr=1.0, warmup_steps=5, total_steps=5),
     "warmup_steps"),
    (lars_jax.mlperf_lars_schedule, dict(peak_lr=1.0, warmup_steps=1, total_steps=5,
                                         power=0.0), "power"),
    (lars_jax.piecewise_linear, dict(boundaries=[0, 5, 5], values=[0, 1, 0]), "boundaries"),
    (lars_jax.piecewise_linear, dict(boundaries=[0, 5], values=[0, 1, 0]), "values"),
    (lars_jax.piecewise_linear, dict(boundaries=[0, 5], values=[0, -1]), "values"),
    (lars_jax.onecycle, dict(total_steps=0, peak_lr=1.0), "total_steps"),
    (lars_jax.onecycle, dict(total_steps=10, peak_lr=1.0, pct_start=1.0), "pct_start"),
    (lars_jax.onecycle, dict(total_steps=10, peak_lr=1.0, kind="exp"), "kind"),
])
def test_bad_arguments_raise_value_error_naming_them(fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)
