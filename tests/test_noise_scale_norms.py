"""Tests for the one-batch gradient noise scale from per-example norms
(`lars_jax.diagnostics.noise_scale_from_norms` and `noise_scale_average`).

Expectations are derived independently of the code under test: a linear regression whose
gradient mean and covariance are known in closed form, a finite data set whose population
``G`` and ``tr(Sigma)`` are computed exactly from ``vmap(grad)``, the existing two-batch
estimator, and a float64 two-pass sample variance in numpy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lars_jax import diagnostics as dg
from lars_jax.per_example import value_grad_and_norms

# -------------------------------------------------------------- linear regression
#
# x ~ N(0, I_d), y = w*.x + eps, eps ~ N(0, s^2), l = (w.x - y)^2 / 2. At parameters w,
# with r = w - w*: g = (r.x - eps) x, so G = E[x x^T] r = r and, by Isserlis' theorem
# E[(r.x)^2 x x^T] = |r|^2 I + 2 r r^T, Sigma = E[g g^T] - G G^T = (|r|^2 + s^2) I + r r^T:
#   tr(Sigma) = d (|r|^2 + s^2) + |r|^2,   |G|^2 = |r|^2.

D, NOISE = 5, 0.5
W_STAR = np.linspace(-1.0, 1.0, D)
R = np.array([0.3, -0.2, 0.1, 0.4, -0.1])
TRACE_TRUE = D * (R @ R + NOISE**2) + R @ R
G2_TRUE = R @ R


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(1, use_bias=False)(x)[:, 0]


_LINEAR = _Linear()
_W = {"Dense_0": {"kernel": jnp.asarray((W_STAR + R)[:, None], jnp.float32)}}


def _regression_batch(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (batch, D))
    y = x @ jnp.asarray(W_STAR, jnp.float32) + NOISE * jax.random.normal(ke, (batch,))
    return x, y


def _mse(params, x, y):
    pred = _LINEAR.apply({"params": params}, x)
    return jnp.mean(0.5 * (pred - y) ** 2)


def test_norms_are_each_examples_own_gradient_not_a_1_over_b_share():
    x, y = _regression_batch(jax.random.key(0), 8)
    _, grads, norms = jax.jit(value_grad_and_norms, static_argnums=0)(_mse, _W, x, y)
    resid = np.asarray(x) @ (W_STAR + R) - np.asarray(y)
    by_hand = np.abs(resid) * np.linalg.norm(np.asarray(x), axis=1)  # |(w.x_i - y_i) x_i|
    np.testing.assert_allclose(norms["Dense_0"]["kernel"], by_hand, rtol=1e-5)
    mean_grad = (resid[:, None] * np.asarray(x)).mean(0)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"][:, 0], mean_grad, rtol=1e-5,
                               atol=1e-6)


@pytest.fixture(scope="module")
def regression_estimates() -> dict[str, np.ndarray]:
    batch, draws = 16, 2000

    def one(key):
        x, y = _regression_batch(key, batch)
        _, grads, norms = value_grad_and_norms(_mse, _W, x, y)
        est = dg.noise_scale_from_norms(grads, norms)
        return est.trace_sigma, est.grad_sq_norm

    keys = jax.random.split(jax.random.key(1), draws)
    trace, g2 = jax.jit(lambda k: jax.lax.map(one, k))(keys)
    return {"trace": np.asarray(trace, np.float64), "g2": np.asarray(g2, np.float64)}


@pytest.mark.parametrize("name,truth", [("trace", TRACE_TRUE), ("g2", G2_TRUE)])
def test_one_batch_estimators_unbiased_on_linear_regression(regression_estimates, name, truth):
    v = regression_estimates[name]
    se = v.std(ddof=1) / np.sqrt(len(v))
    # the mean of 2000 independent estimates is normal to good approximation: a correct,
    # unbiased estimator misses by more than 4 standard errors with probability 6e-5
    assert abs(v.mean() - truth) < 4 * se
    # and the test has power: 4 standard errors are a small fraction of the truth
    assert 4 * se < 0.1 * truth


def test_b_simple_of_averages_matches_closed_form(regression_estimates):
    t, g = regression_estimates["trace"], regression_estimates["g2"]
    avg = dg.noise_scale_average(t, g, decay=0.999)
    b_true = TRACE_TRUE / G2_TRUE  # = 1 + d (1 + s^2 / |r|^2)
    assert np.isclose(b_true, 1 + D * (1 + NOISE**2 / (R @ R)))
    lo, hi = float(avg.b_simple_lo[-1]), float(avg.b_simple_hi[-1])
    assert lo <= b_true <= hi
    assert hi - lo < 0.5 * b_true


def test_b_simple_wrong_if_norms_were_scaled_by_1_over_b():
    """The same estimator fed norms of the ``l_i / B`` shares is biased (fails the check)."""
    batch, draws = 16, 400

    def one(key):
        x, y = _regression_batch(key, batch)
        _, grads, norms = value_grad_and_norms(_mse, _W, x, y)
        est = dg.noise_scale_from_norms(grads, jax.tree.map(lambda n: n / batch, norms))
        return est.trace_sigma

    trace = np.asarray(jax.jit(lambda k: jax.lax.map(one, k))(
        jax.random.split(jax.random.key(2), draws)))
    se = trace.std(ddof=1) / np.sqrt(draws)
    assert abs(trace.mean() - TRACE_TRUE) > 10 * se


# -------------------------------------------------------------- small MLP, finite data


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x)))


_MLP_MODEL = _MLP()
N_DATA, IN = 256, 6


def _ce(params, x, y):
    logits = _MLP_MODEL.apply({"params": params}, x)
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)[:, 0])


@pytest.fixture(scope="module")
def mlp_problem():
    kx, ky, kp = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (N_DATA, IN))
    y = jax.random.randint(ky, (N_DATA,), 0, 3)
    params = jax.jit(_MLP_MODEL.init)(kp, x[:1])["params"]  # compiled: eagerly, op by op
    # the population: every example's gradient by vmap(grad), flattened
    per_ex = jax.jit(jax.vmap(jax.grad(lambda p, a, b: _ce(p, a[None], b[None])), (None, 0, 0)))(
        params, x, y)
    flat = np.concatenate([np.asarray(v, np.float64).reshape(N_DATA, -1)
                           for v in jax.tree.leaves(per_ex)], axis=1)
    g = flat.mean(0)
    return {"x": x, "y": y, "params": params, "g2": g @ g,
            "trace": np.mean(np.sum((flat - g) ** 2, axis=1))}


def test_mlp_agrees_with_two_batch_estimator_and_population(mlp_problem):
    batch, groups, draws = 32, 4, 1500
    p, x, y = mlp_problem["params"], mlp_problem["x"], mlp_problem["y"]

    def one(key):
        idx = jax.random.randint(key, (batch,), 0, N_DATA)  # with replacement: i.i.d.
        xb, yb = x[idx], y[idx]
        _, grads, norms = value_grad_and_norms(_ce, p, xb, yb)
        est = dg.noise_scale_from_norms(grads, norms)
        _, _, group_norms = value_grad_and_norms(_ce, p, xb, yb, num_groups=groups)
        small = jnp.mean(sum(jnp.square(n) for n in jax.tree.leaves(group_norms)))
        g2_tb, tr_tb = dg.noise_scale_estimates(small, est.batch_grad_sq_norm,
                                                batch // groups, batch)
        return est.trace_sigma, est.grad_sq_norm, tr_tb, g2_tb

    out = jax.jit(lambda k: jax.lax.map(one, k))(jax.random.split(jax.random.key(4), draws))
    tr_pe, g2_pe, tr_tb, g2_tb = (np.asarray(v, np.float64) for v in out)
    for pe, tb, truth in ((tr_pe, tr_tb, mlp_problem["trace"]),
                          (g2_pe, g2_tb, mlp_problem["g2"])):
        se_tb = tb.std(ddof=1) / np.sqrt(draws)
        se_diff = (pe - tb).std(ddof=1) / np.sqrt(draws)  # paired: same batches
        assert abs(pe.mean() - tb.mean()) < 4 * se_diff
        assert abs(pe.mean() - tb.mean()) < 2 * se_tb  # within the two-batch SE
        assert abs(pe.mean() - truth) < 4 * pe.std(ddof=1) / np.sqrt(draws)
    # the per-example estimator is the more precise of the two (it uses every example)
    assert tr_pe.std() < tr_tb.std()


# -------------------------------------------------------------- algebra (hypothesis)


def _two_pass(g: np.ndarray) -> tuple[float, float]:
    b = g.shape[0]
    mean = g.mean(0)
    trace = float(np.sum((g - mean) ** 2) / (b - 1))
    return trace, float(mean @ mean - trace / b)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(2, 12),
    dims=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    offset=st.floats(-3.0, 3.0),
)
def test_matches_two_pass_sample_variance(seed, batch, dims, offset):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, dims[0])) + offset
    b = rng.standard_normal((batch, dims[1], 2))
    grads = {"a": jnp.asarray(a.mean(0), jnp.float32), "b": jnp.asarray(b.mean(0), jnp.float32)}
    norms = {"a": jnp.asarray(np.linalg.norm(a, axis=1), jnp.float32),
             "b": jnp.asarray(np.linalg.norm(b.reshape(batch, -1), axis=1), jnp.float32)}
    est = dg.noise_scale_from_norms(grads, norms)
    trace, g2 = _two_pass(np.concatenate([a, b.reshape(batch, -1)], axis=1))
    scale = float(np.mean(np.sum(a**2, 1) + np.sum(b.reshape(batch, -1) ** 2, 1)))
    assert est.trace_sigma.dtype == jnp.float32
    np.testing.assert_allclose(float(est.trace_sigma), trace, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(float(est.grad_sq_norm), g2, rtol=1e-4, atol=1e-5 * scale)
    assert int(est.batch_size) == batch


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), c=st.floats(0.01, 100.0))
def test_b_simple_invariant_to_gradient_scale(seed, c):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((8, 3)) + 2.0
    est = dg.noise_scale_from_norms({"w": g.mean(0)}, {"w": np.linalg.norm(g, axis=1)})
    est_c = dg.noise_scale_from_norms({"w": c * g.mean(0)}, {"w": c * np.linalg.norm(g, axis=1)})
    np.testing.assert_allclose(float(est_c.trace_sigma), c**2 * float(est.trace_sigma),
                               rtol=1e-4)
    np.testing.assert_allclose(float(est_c.b_simple), float(est.b_simple), rtol=1e-3)


def test_jittable_and_float64_kept():
    g = jnp.ones((4, 2))
    f = jax.jit(lambda grads, norms: dg.noise_scale_from_norms(grads, norms))
    est = f({"w": g.mean(0)}, {"w": jnp.linalg.norm(g, axis=1)})
    assert abs(float(est.trace_sigma)) < 1e-6 and abs(float(est.grad_sq_norm) - 2.0) < 1e-6
    e16 = dg.noise_scale_from_sqnorms(jnp.float16(5.0), jnp.float16(2.0), 4)
    assert e16.trace_sigma.dtype == jnp.float32  # float32 or better


def test_bad_norm_trees_refused():
    with pytest.raises(ValueError, match="per_example_norms"):
        dg.noise_scale_from_norms({"w": jnp.ones(2)}, {"w": jnp.ones(3), "v": jnp.ones(4)})
    with pytest.raises(ValueError, match="B >= 2"):
        dg.noise_scale_from_norms({"w": jnp.ones(2)}, {"w": jnp.ones(1)})
    with pytest.raises(ValueError, match="per_example_norms"):
        dg.noise_scale_from_norms({"w": jnp.ones(2)}, {})
    with pytest.raises(ValueError, match="decay"):
        dg.noise_scale_average([1.0], [1.0], decay=1.0)
    with pytest.raises(ValueError, match="1-D"):
        dg.noise_scale_average([1.0, 2.0], [1.0], decay=0.5)


# -------------------------------------------------------------- averaging


@pytest.mark.parametrize("seed,steps,decay", [(0, 2, 0.5), (1, 25, 0.9), (2, 25, 0.0)])
def test_average_is_the_weighted_mean_with_kish_standard_error(seed, steps, decay):
    rng = np.random.default_rng(seed)
    t = rng.uniform(1.0, 5.0, steps)
    g = rng.uniform(0.5, 1.5, steps)
    avg = dg.noise_scale_average(t, g, decay=decay)
    w = decay ** np.arange(steps - 1, -1, -1, dtype=np.float64)  # newest weight 1
    w = w / w.sum()
    mt, mg = w @ t, w @ g
    np.testing.assert_allclose(float(avg.trace_sigma[-1]), mt, rtol=1e-5)
    np.testing.assert_allclose(float(avg.b_simple[-1]), mt / mg, rtol=1e-5)
    if 1.0 - np.sum(w**2) > 1e-3:  # the weighted spread is defined
        var = np.sum(w * (t - mt) ** 2) / (1.0 - np.sum(w**2))
        np.testing.assert_allclose(float(avg.trace_sigma_se[-1]),
                                   np.sqrt(var * np.sum(w**2)), rtol=1e-3, atol=1e-6)


def test_interval_covers_truth_at_its_nominal_rate():
    """For i.i.d. steps with known means, the 95% interval covers tr/G2 about 95% of the time."""
    series, steps = 600, 300
    key_t, key_g = jax.random.split(jax.random.key(5))
    t = 10.0 + 3.0 * jax.random.normal(key_t, (series, steps))
    g = 1.0 + 0.2 * jax.random.normal(key_g, (series, steps))
    avg = jax.jit(jax.vmap(lambda a, b: dg.noise_scale_average(a, b, decay=0.95)))(t, g)
    covered = np.mean((np.asarray(avg.b_simple_lo[:, -1]) <= 10.0)
                      & (np.asarray(avg.b_simple_hi[:, -1]) >= 10.0))
    # binomial(600, 0.95) has sd 0.009: 0.91 .. 0.99 is over 4 sd either side
    assert 0.91 <= covered <= 0.99
    assert np.isclose(float(avg.effective_count[0, -1]), 1.95 / 0.05, rtol=1e-3)


def test_average_open_interval_while_g2_not_positive():
    avg = dg.noise_scale_average([1.0, 1.2, 0.9], [0.1, -0.2, 0.05], decay=0.5)
    assert np.isinf(float(avg.b_simple_hi[-1]))
    assert np.isinf(float(avg.b_simple_se[0]))
