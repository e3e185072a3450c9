"""Tests for lars_jax.diagnostics: Page's weight-norm dynamics and the noise scale."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lars_jax import diagnostics as dg

# ------------------------------------------------------------------ noise scale


def _simulate_two_batch(rng, g_true, sigma_diag, groups, per_group, draws):
    """Draws `draws` data-parallel steps: `groups` groups of `per_group` examples."""
    d = g_true.shape[0]
    noise = rng.standard_normal((draws, groups, per_group, d)) * np.sqrt(sigma_diag)
    group_grads = (g_true + noise).mean(axis=2)  # [draws, groups, d]
    small = np.mean(np.sum(group_grads**2, -1), axis=1)  # mean over groups of |G_k|^2
    big = np.sum(group_grads.mean(axis=1) ** 2, -1)  # |mean gradient|^2
    return small, big


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    groups=st.integers(2, 8),
    per_group=st.integers(1, 16),
    noise_level=st.floats(0.1, 10.0),
)
def test_two_batch_estimators_unbiased(seed, groups, per_group, noise_level):
    rng = np.random.default_rng(seed)
    d = 16
    g_true = rng.standard_normal(d)
    sigma_diag = noise_level * rng.uniform(0.5, 1.5, d)
    draws = 4000
    small, big = _simulate_two_batch(rng, g_true, sigma_diag, groups, per_group, draws)
    g2, tr = dg.noise_scale_estimates(small, big, per_group, groups * per_group)
    g2, tr = np.asarray(g2, np.float64), np.asarray(tr, np.float64)
    # tolerance: 5 standard errors of the mean of the per-draw estimates
    for est, truth in ((g2, np.sum(g_true**2)), (tr, np.sum(sigma_diag))):
        se = est.std() / np.sqrt(draws)
        assert abs(est.mean() - truth) < 5 * se + 1e-3 * truth, (est.mean(), truth)


def test_noise_scale_estimates_exact_on_expectations():
    # Plug the exact expectations E|G_B|^2 = |G|^2 + tr/B into the estimators.
    g2_true, tr_true = 3.0, 40.0
    for bs, bb in ((1, 2), (4, 64), (32, 8192)):
        g2, tr = dg.noise_scale_estimates(g2_true + tr_true / bs, g2_true + tr_true / bb, bs, bb)
        np.testing.assert_allclose([float(g2), float(tr)], [g2_true, tr_true], rtol=1e-4)


def test_noise_scale_bad_input():
    with pytest.raises(ValueError, match="batch_big"):
        dg.noise_scale_estimates(1.0, 1.0, 8, 8)
    with pytest.raises(ValueError, match="batch_small"):
        dg.noise_scale_estimates(1.0, 1.0, 0, 8)
    with pytest.raises(ValueError, match="decay"):
        dg.noise_scale_update(dg.noise_scale_init(), 1.0, 1.0, 1, 2, decay=1.0)


def test_ema_noise_scale_converges_and_beats_ratio_of_single_estimates():
    rng = np.random.default_rng(0)
    d, groups, per_group = 8, 4, 2
    g_true = rng.standard_normal(d)
    g_true /= np.linalg.norm(g_true)  # |G|^2 = 1
    sigma = np.full((d,), 2.0)  # B_simple = 16
    b_true = float(np.sum(sigma) / np.sum(g_true**2))
    small, big = _simulate_two_batch(rng, g_true, sigma, groups, per_group, 20000)
    out = dg.noise_scale_series(small, big, per_group, groups * per_group, decay=0.9995)
    b = np.asarray(out["b_simple"])
    assert np.all(~np.isnan(b))
    # the EMA ratio ends within 20% of the truth ...
    assert abs(b[-1] - b_true) / b_true < 0.2, (b[-1], b_true)
    # ... while single-step ratios are useless (sign flips of the |G|^2 estimate)
    single = np.asarray(out["trace_sigma"] / out["grad_sqnorm"])
    assert np.mean(single < 0) > 0.1
    # the bias-corrected EMA of |G|^2 matches the truth too
    g2_true = float(np.sum(g_true**2))
    assert abs(float(out["grad_sqnorm_ema"][-1]) - g2_true) < 0.3 * g2_true


def test_ema_noise_scale_inf_not_nan_when_gradient_estimate_nonpositive():
    state, b = dg.noise_scale_update(dg.noise_scale_init(), 1.0, 2.0, 1, 2)  # |G|^2 est. = 3
    assert np.isfinite(float(b))
    state, b = dg.noise_scale_update(dg.noise_scale_init(), 3.0, 1.0, 1, 2)  # |G|^2 est. < 0
    assert float(b) == np.inf


def test_noise_scale_from_metrics(tmp_path):
    g2_true, tr_true, bs, bb = 2.0, 64.0, 8, 32
    rows = [{"step": 0, "loss": 1.0}]  # rows without the keys are skipped
    for step in range(1, 21):
        rows.append({
            "step": step, "grad_sqnorm_small": g2_true + tr_true / bs,
            "grad_sqnorm_big": g2_true + tr_true / bb, "batch_small": bs, "batch_big": bb,
        })
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from lars_jax.runs.run_files import noise_scale_from_metrics

    out = noise_scale_from_metrics(tmp_path, ema=0.9)
    np.testing.assert_array_equal(out["step"], np.arange(1, 21))
    np.testing.assert_allclose(out["b_simple"], tr_true / g2_true, rtol=1e-4)
    with pytest.raises(ValueError, match="path"):
        noise_scale_from_metrics(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------ layer diagnostics


def _tiny():
    params = {
        "dense": {"kernel": jnp.array([[1.0, 2.0], [0.0, -1.0]]), "bias": jnp.array([0.5, 0.5])},
        "conv": {"kernel": jnp.arange(8.0).reshape(2, 2, 2) / 4.0},
    }
    g1 = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    g2 = {
        "dense": {"kernel": jnp.array([[0.3, -0.1], [0.2, 0.4]]), "bias": jnp.array([1.0, 1.0])},
        "conv": {"kernel": -jnp.ones((2, 2, 2)) * 0.05},
    }
    return params, g1, g2


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_layer_diagnostics_matches_hand_computation_optax_sgd(momentum):
    params, g1, g2 = _tiny()
    lr, wd = 0.1, 5e-3
    opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum or None))
    state = opt.init(params)
    _, state = opt.update(g1, state, params)  # v_0 = g1 + wd*w
    d = dg.layer_diagnostics(params, g2, state, lr, wd, momentum)
    assert not any(k.startswith("dense/bias") for k in d)  # ndim <= 1 skipped
    lr_e = lr / (1 - momentum)
    for layer in ("dense/kernel", "conv/kernel"):
        w = np.asarray(params[layer.split("/")[0]]["kernel"], np.float64)
        g = np.asarray(g2[layer.split("/")[0]]["kernel"], np.float64)
        v = np.asarray(g1[layer.split("/")[0]]["kernel"], np.float64) + wd * w
        w2, gg = np.sum(w * w), np.sum(g * g)
        np.testing.assert_allclose(float(d[f"{layer}/w_sqnorm"]), w2, rtol=1e-6)
        np.testing.assert_allclose(float(d[f"{layer}/g_sqnorm"]), gg, rtol=1e-6)
        np.testing.assert_allclose(
            float(d[f"{layer}/wd_shrink"]), w2 - (1 - lr_e * wd) ** 2 * w2, rtol=1e-4
        )
        np.testing.assert_allclose(float(d[f"{layer}/grad_growth"]), lr_e**2 * gg, rtol=1e-5)
        np.testing.assert_allclose(
            float(d[f"{layer}/lr_g_over_w"]), lr * np.sqrt(gg / w2), rtol=1e-5
        )
        np.testing.assert_allclose(
            float(d[f"{layer}/cos_w_g"]), np.sum(w * g) / np.sqrt(w2 * gg), rtol=1e-5
        )
        if momentum:
            cos = np.sum(g * v) / np.sqrt(gg * np.sum(v * v))
            np.testing.assert_allclose(float(d[f"{layer}/cos_g_v"]), cos, rtol=1e-5)
        else:
            assert f"{layer}/cos_g_v" not in d


def test_layer_diagnostics_finds_trace_through_wrappers_and_updates():
    params, g1, g2 = _tiny()
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    opt = optax.masked(opt, jax.tree.map(lambda p: p.ndim > 1, params))
    state = opt.init(params)
    assert dg.find_momentum_buffer(state) is not None
    zero = dg.layer_diagnostics(params, g2, state, 0.1, 0.0, 0.9)
    assert float(zero["dense/kernel/cos_g_v"]) == 0.0  # zero buffer: 0, not NaN
    updates, state = opt.update(g1, state, params)
    d = jax.jit(dg.layer_diagnostics, static_argnames="min_ndim")(
        params, g1, state, 0.1, 0.0, 0.9, updates=updates
    )
    np.testing.assert_allclose(float(d["dense/kernel/cos_g_v"]), 1.0, rtol=1e-6)
    w, u = params["dense"]["kernel"], updates["dense"]["kernel"]
    np.testing.assert_allclose(
        float(d["dense/kernel/actual_dw_sqnorm"]),
        np.sum((np.float64(w) + np.float64(u)) ** 2) - np.sum(np.float64(w) ** 2), rtol=1e-5,
    )
    # biases included on request
    d0 = dg.layer_diagnostics(params, g1, state, 0.1, 0.0, 0.9, min_ndim=0)
    assert "dense/bias/w_sqnorm" in d0


def test_layer_diagnostics_with_lars_state():
    """cos_g_v with lars_jax.lars's state, against a momentum buffer built by hand.

    lars_jax.lars is chain(masked trust ratio, scale_by_learning_rate, trace): after one
    update from a zero buffer, v = -lr * ratio * (g1 + wd * w) on the masked (ndim > 1)
    tensors, ratio = tc * |w| / (|g1| + wd * |w|), and v = -lr * g1 on the biases.
    Catches: the diagnostics reading another tensor of the state (e.g. the trust-ratio
    state or the un-scaled gradient) as the buffer, or dropping the buffer's sign/ratio.
    """
    import lars_jax

    params, g1, g2 = _tiny()
    lr, wd, tc, m = 0.1, 1e-2, 0.001, 0.9
    opt = lars_jax.lars(lr, momentum=m, weight_decay=wd, trust_coefficient=tc)
    state = opt.init(params)
    _, state = opt.update(g1, state, params)
    d = dg.layer_diagnostics(params, g2, state, lr, wd, m)
    buf = dg.find_momentum_buffer(state)
    for layer in ("dense", "conv"):
        w = np.asarray(params[layer]["kernel"], np.float64)
        gk1 = np.asarray(g1[layer]["kernel"], np.float64)
        gk2 = np.asarray(g2[layer]["kernel"], np.float64)
        ratio = tc * np.linalg.norm(w) / (np.linalg.norm(gk1) + wd * np.linalg.norm(w))
        v = -lr * ratio * (gk1 + wd * w)
        np.testing.assert_allclose(np.asarray(buf[layer]["kernel"]), v, rtol=1e-5)
        cos = np.sum(gk2 * v) / np.sqrt(np.sum(gk2 * gk2) * np.sum(v * v))
        np.testing.assert_allclose(float(d[f"{layer}/kernel/cos_g_v"]), cos, rtol=1e-5)
    # the bias is not masked: plain momentum SGD, v = -lr * g1
    np.testing.assert_allclose(np.asarray(buf["dense"]["bias"]),
                               -lr * np.asarray(g1["dense"]["bias"]), rtol=1e-6)


def test_layer_diagnostics_bad_input():
    params, g1, _ = _tiny()
    with pytest.raises(ValueError, match="grads"):
        dg.layer_diagnostics(params, {"dense": g1["dense"]})
    with pytest.raises(ValueError, match="momentum"):
        dg.layer_diagnostics(params, g1, momentum=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        dg.page_equilibrium_ratio(0.0, 1e-4)


# ------------------------------------------------------------------ Page's equilibrium


def _scale_invariant_sgd(lr, wd, momentum, steps, w0_norm, noise, seed=0, d=32):
    """SGD(+momentum) with coupled weight decay on L(w) = 0.5*|w/|w| - t|^2 + noise.

    The loss depends on w only through u = w/|w|, so the gradient is orthogonal to w and
    scales as 1/|w|. Noise is added in u-space and projected the same way, as a
    mini-batch gradient of a scale-invariant layer would be.
    """
    key = jax.random.PRNGKey(seed)
    k0, kt, kn = jax.random.split(key, 3)
    w = jax.random.normal(k0, (d,))
    w = w / jnp.linalg.norm(w) * w0_norm
    target = jax.random.normal(kt, (d,))
    target = target / jnp.linalg.norm(target)

    def grad_fn(w, k):
        n = jnp.linalg.norm(w)
        u = w / n
        gu = (u - target) + noise * jax.random.normal(k, (d,))
        return (gu - jnp.dot(gu, u) * u) / n

    opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum or None))
    params = {"w": w.reshape(4, d // 4)}
    state = opt.init(params)

    def step(carry, k):
        params, state = carry
        g = {"w": grad_fn(params["w"].reshape(-1), k).reshape(4, d // 4)}
        diag = dg.layer_diagnostics(params, g, state, lr, wd, momentum)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), diag

    _, diags = jax.lax.scan(step, (params, state), jax.random.split(kn, steps))
    return diags


@pytest.mark.parametrize("w0_norm", [0.05, 20.0])
def test_page_equilibrium_plain_sgd(w0_norm):
    lr, wd = 0.5, 0.2  # lr*wd = 0.1 so lr/(2 wd) and lr/(wd (2 - lr wd)) differ by 5%
    steps = 6000
    diags = _scale_invariant_sgd(lr, wd, 0.0, steps, w0_norm, noise=1.0)
    w2, g2 = np.asarray(diags["w/w_sqnorm"]), np.asarray(diags["w/g_sqnorm"])
    burn = 500  # relaxation time 1/(2 lr wd) = 5 steps
    ratio = w2[burn:].mean() / g2[burn:].mean()
    predicted = dg.page_equilibrium_ratio(lr, wd)
    assert abs(ratio - predicted) / predicted < 0.02, (ratio, predicted)
    assert abs(ratio - lr / (2 * wd)) / (lr / (2 * wd)) > 0.03  # the correction is measurable
    # shrink and growth balance on average; lr|g|/|w| ~ sqrt(2 lr wd) (exactly: the rms)
    shrink = np.asarray(diags["w/wd_shrink"])[burn:].mean()
    growth = np.asarray(diags["w/grad_growth"])[burn:].mean()
    assert abs(shrink - growth) / growth < 0.02
    rms = np.sqrt(np.mean(np.asarray(diags["w/lr_g_over_w"])[burn:] ** 2))
    assert abs(rms - np.sqrt(lr * wd * (2 - lr * wd))) / rms < 0.05
    # far from equilibrium at the start: the first step is not balanced
    first = abs(diags["w/wd_shrink"][0] - diags["w/grad_growth"][0]) / diags["w/grad_growth"][0]
    assert float(first) > 0.5
    # the gradient of a scale-invariant loss is orthogonal to w
    assert float(jnp.max(jnp.abs(diags["w/cos_w_g"]))) < 1e-4


def test_page_equilibrium_with_momentum_noise_dominated():
    lr, wd, rho = 0.05, 0.1, 0.9
    diags = _scale_invariant_sgd(lr, wd, rho, 12000, 1.0, noise=3.0, seed=1)
    burn = 2000  # relaxation ~ (1-rho)/(2 lr wd) = 10 steps
    w2 = np.asarray(diags["w/w_sqnorm"])[burn:].mean()
    g2 = np.asarray(diags["w/g_sqnorm"])[burn:].mean()
    predicted = lr / (2 * wd * (1 - rho))  # |w|^2/|g|^2, uncorrelated gradients
    assert abs(w2 / g2 - predicted) / predicted < 0.15, (w2 / g2, predicted)
    # noise-dominated gradients: g_t nearly uncorrelated with the buffer v_{t-1}
    cos = np.asarray(diags["w/cos_g_v"])[burn:]
    assert abs(cos.mean()) < 0.15
