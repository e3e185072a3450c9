"""Tests of scale_by_lars_trust_ratio, scale_by_clars_trust_ratio and trust_ratio_stats."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import random_tree, trust_ratio
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import lars_jax

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate))


def _to_jax(tree, dtype=jnp.float32):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


# A scalar, a vector, a matrix and a conv kernel (every rank of SHAPES, 1 to 72 entries)
# in one tree: the computation is per tensor, so each example checks every case, and all
# examples share one tree structure, so one compiled update.
ALL_SHAPES = [0, 1, 3, 5]


@functools.cache
def _compiled(denominator: str, clipped: bool, decay: bool):
    @jax.jit
    def update(grads, params, wd, tc, eps, clip):
        tx = lars_jax.scale_by_lars_trust_ratio(
            weight_decay=wd if decay else 0.0, trust_coefficient=tc, eps=eps,
            denominator=denominator, clip=clip if clipped else None)
        return tx.update(grads, tx.init(params), params)

    return update


def _update(grads, params, *, wd, tc, eps, denominator, clip):
    """``(out, state)`` of one update of a fresh scale_by_lars_trust_ratio, compiled once
    per structural choice: the hyperparameters are traced arguments, so the examples of a
    hypothesis test share a program instead of compiling one each. A zero weight decay
    is the Python constant 0.0 (the transform's no-decay path), not a traced zero."""
    update = _compiled(denominator, clip is not None, wd != 0.0)
    return update(grads, params, wd, tc, eps, 1.0 if clip is None else clip)


@SETTINGS
@given(seed=st.integers(0, 2**16),
       wd=st.sampled_from([0.0, 1e-3, 0.5]), tc=st.sampled_from([1e-3, 1.0]),
       eps=st.sampled_from([0.0, 1e-3]), denominator=st.sampled_from(["paper", "optax"]),
       clip=st.sampled_from([None, 0.01, 1.0]))
def test_ratio_and_output_match_reference(seed, wd, tc, eps, denominator, clip):
    params = random_tree(seed, ALL_SHAPES)
    grads = random_tree(seed + 1, ALL_SHAPES, scale=0.2)
    out, state = _update(_to_jax(grads), _to_jax(params), wd=wd, tc=tc, eps=eps,
                         denominator=denominator, clip=clip)
    assert isinstance(state, lars_jax.LarsTrustRatioState)
    for w, g, o, r in zip(jax.tree.leaves(params), jax.tree.leaves(grads),
                          jax.tree.leaves(out), jax.tree.leaves(state.trust_ratio), strict=True):
        want = trust_ratio(w, g, wd=wd, tc=tc, eps=eps, denominator=denominator, clip=clip)
        np.testing.assert_allclose(float(r), want, rtol=2e-6)
        np.testing.assert_allclose(np.asarray(o), want * (g + wd * w), rtol=2e-6, atol=1e-7)
    for w, pn in zip(jax.tree.leaves(params), jax.tree.leaves(state.param_norm), strict=True):
        np.testing.assert_allclose(float(pn), np.linalg.norm(np.ravel(w)), rtol=2e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_output_keeps_update_dtype_and_state_is_float32(dtype):
    params = {"k": jnp.ones((3, 4), dtype), "b": jnp.ones(4, dtype)}
    grads = jax.tree.map(lambda x: 0.25 * x, params)
    for tx in (lars_jax.scale_by_lars_trust_ratio(weight_decay=1e-3),
               lars_jax.scale_by_lars_trust_ratio(weight_decay=1e-3, denominator="optax")):
        out, state = tx.update(grads, tx.init(params), params)
        assert all(o.dtype == dtype for o in jax.tree.leaves(out))
        stats = lars_jax.trust_ratio_stats(state)
        assert all(x.dtype == jnp.float32 and x.shape == () for x in jax.tree.leaves(stats))
        assert state.count.dtype == jnp.int32 and int(state.count) == 1


def test_state_holds_the_last_steps_values():
    params = {"k": jnp.full((2, 2), 2.0)}
    tx = lars_jax.scale_by_lars_trust_ratio(trust_coefficient=1.0)
    state = tx.init(params)
    np.testing.assert_allclose(float(state.trust_ratio["k"]), 1.0)
    _, state = tx.update({"k": jnp.full((2, 2), 1.0)}, state, params)
    np.testing.assert_allclose(float(state.trust_ratio["k"]), 2.0)
    _, state = tx.update({"k": jnp.full((2, 2), 0.5)}, state, params)
    np.testing.assert_allclose(float(state.trust_ratio["k"]), 4.0)
    np.testing.assert_allclose(float(state.param_norm["k"]), 4.0)
    np.testing.assert_allclose(float(state.grad_norm["k"]), 1.0)


def test_update_without_params_raises():
    tx = lars_jax.scale_by_lars_trust_ratio()
    with pytest.raises(ValueError, match="params"):
        tx.update({"k": jnp.ones((2, 2))}, tx.init({"k": jnp.ones((2, 2))}))


# ----------------------------------------------------------------- CLARS


def _per_example(seed: int, shape: tuple[int, ...], n: int, identical: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if identical:
        return np.broadcast_to(rng.standard_normal(shape), (n, *shape)).copy()
    return rng.standard_normal((n, *shape))


@functools.cache
def _compiled_lars_and_clars_states(decay: bool):
    """``(lars state, clars state)`` after one update of each transform, compiled once per
    shape of the norms (weight decay and norms are traced arguments)."""

    @jax.jit
    def states(g, p, norms, wd):
        kw = dict(weight_decay=wd if decay else 0.0, trust_coefficient=0.01)
        lars_tx = lars_jax.scale_by_lars_trust_ratio(**kw)
        clars_tx = lars_jax.scale_by_clars_trust_ratio(**kw)
        _, s_lars = lars_tx.update(g, lars_tx.init(p), p)
        _, s_clars = clars_tx.update(g, clars_tx.init(p), p, per_example_norms=norms)
        return s_lars, s_clars

    return states


# n: one example (CLARS = LARS), and two batch sizes above one (the inequality holds for
# any n; each n is one compiled program).
@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.sampled_from([1, 2, 5]),
       wd=st.sampled_from([0.0, 1e-3]), identical=st.booleans())
def test_clars_ratio_at_most_lars_ratio_equal_when_examples_agree(seed, n, wd, identical):
    params = random_tree(seed, ALL_SHAPES)
    per_ex = jax.tree.map(lambda w: _per_example(seed + w.size, np.shape(w), n, identical),
                          params)
    grads = jax.tree.map(lambda g: g.mean(axis=0), per_ex)
    norms = jax.tree.map(lambda g: np.sqrt((g.reshape(n, -1) ** 2).sum(axis=1)), per_ex)
    s_lars, s_clars = _compiled_lars_and_clars_states(wd != 0.0)(
        _to_jax(grads), _to_jax(params), _to_jax(norms), wd)
    for rl, rc, nm in zip(jax.tree.leaves(s_lars.trust_ratio),
                          jax.tree.leaves(s_clars.trust_ratio), jax.tree.leaves(norms),
                          strict=True):
        if np.all(nm == 0):
            continue
        assert float(rc) <= float(rl) * (1 + 1e-5)
        if identical or n == 1:
            np.testing.assert_allclose(float(rc), float(rl), rtol=1e-5)
    for gn, nm in zip(jax.tree.leaves(s_clars.grad_norm), jax.tree.leaves(norms), strict=True):
        np.testing.assert_allclose(float(gn), nm.mean(), rtol=1e-6)


def test_clars_strictly_smaller_when_examples_disagree():
    w = {"k": jnp.ones((2, 2))}
    g = {"k": jnp.zeros((2, 2)).at[0, 0].set(0.1)}          # mean of +1.1 and -0.9
    norms = {"k": jnp.array([1.1, 0.9])}
    lars_tx = lars_jax.scale_by_lars_trust_ratio(trust_coefficient=1.0)
    clars_tx = lars_jax.scale_by_clars_trust_ratio(trust_coefficient=1.0)
    _, a = lars_tx.update(g, lars_tx.init(w), w)
    _, b = clars_tx.update(g, clars_tx.init(w), w, per_example_norms=norms)
    np.testing.assert_allclose(float(a.trust_ratio["k"]), 2.0 / 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(b.trust_ratio["k"]), 2.0 / 1.0, rtol=1e-6)


def test_clars_ignores_norms_of_masked_out_tensors():
    params = {"k": jnp.ones((2, 3)), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda x: 0.5 * x, params)
    tx = lars_jax.clars(0.1, momentum=0.0, trust_coefficient=0.1)
    a, _ = tx.update(grads, tx.init(params), params,
                     per_example_norms={"k": jnp.ones(2), "b": jnp.ones(2)})
    b, _ = tx.update(grads, tx.init(params), params,
                     per_example_norms={"k": jnp.ones(2), "b": jnp.full(5, 1e6)})
    chex.assert_trees_all_equal(a, b)
    np.testing.assert_allclose(a["b"], -0.1 * grads["b"])


# ----------------------------------------------------------------- stats, schedules


def test_trust_ratio_stats_finds_state_through_wrappers():
    params = {"k": jnp.ones((3, 3)), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    assert lars_jax.trust_ratio_stats(optax.sgd(0.1).init(params)) is None
    wrapped = [
        lars_jax.lars(0.1),
        optax.inject_hyperparams(lars_jax.lars)(learning_rate=0.1),
        optax.MultiSteps(lars_jax.larc(0.1), every_k_schedule=1),
        optax.chain(optax.clip_by_global_norm(1.0), lars_jax.lars(0.1, weight_decay=1e-4)),
        lars_jax.lars(0.1, weight_decay=optax.constant_schedule(1e-4)),
    ]
    for tx in wrapped:
        state = tx.init(params)
        _, state = tx.update(grads, state, params)
        stats = lars_jax.trust_ratio_stats(state)
        assert set(stats) == {"trust_ratio", "param_norm", "grad_norm"}
        assert isinstance(stats["trust_ratio"]["b"], optax.MaskedNode)
        np.testing.assert_allclose(float(stats["param_norm"]["k"]), 3.0, rtol=1e-6)
        np.testing.assert_allclose(float(stats["grad_norm"]["k"]), 0.3, rtol=1e-6)
        assert len(jax.tree.leaves(stats)) == 3


def test_weight_decay_schedule_is_evaluated_per_step():
    params = {"k": jnp.ones((2, 2))}
    grads = {"k": jnp.zeros((2, 2))}  # zero gradient: ratio 1, output = wd_t * w
    tx = lars_jax.scale_by_lars_trust_ratio(weight_decay=lambda t: 0.1 * (t + 1))
    state = tx.init(params)
    for t in range(3):
        out, state = jax.jit(tx.update)(grads, state, params)
        np.testing.assert_allclose(np.asarray(out["k"]), 0.1 * (t + 1), rtol=1e-6)
    with pytest.raises(ValueError, match="weight_decay"):
        lars_jax.scale_by_lars_trust_ratio(weight_decay=lambda t: -0.1 + 0 * t)


@pytest.mark.parametrize("kwargs, name", [
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(trust_coefficient=-1e-3), "trust_coefficient"),
    (dict(trust_coefficient=0.0), "trust_coefficient"),  # the kernels would never move
    (dict(trust_coefficient=lambda t: 1.0), "trust_coefficient"),
    (dict(eps=-1.0), "eps"),
    (dict(denominator="Paper"), "denominator"),
    (dict(clip=0.0), "clip"),
    (dict(clip=float("inf")), "clip"),
])
@pytest.mark.parametrize("factory", [lars_jax.scale_by_lars_trust_ratio,
                                     lars_jax.scale_by_clars_trust_ratio])
def test_transform_bad_hyperparameters(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


# ------------------------------------------------- magnitudes where trust ratios break

# Exact zeros, float32 denormals (XLA flushes them to zero), entries whose squares
# underflow (1e-20, 1e-30) or would overflow (1e20) in float32, and tiny gradients under
# large weights (a ratio beyond the float32 range).
magnitudes = st.sampled_from([0.0, 1e-40, 1e-30, 1e-20, 1e-3, 1.0, 1e20])
_TINY32 = float(np.finfo(np.float32).tiny)


def _as_float32_flushed(tree):
    """The float32 values XLA computes with, as float64: denormals flushed to zero."""
    def flush(x):
        x = np.asarray(np.asarray(x, np.float32), np.float64)
        return np.where(np.abs(x) < _TINY32, 0.0, x)
    return jax.tree.map(flush, tree)


@settings(max_examples=40, deadline=None, derandomize=True,
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(seed=st.integers(0, 2**16), w_mag=magnitudes, g_mag=magnitudes,
       wd=st.sampled_from([0.0, 1e-4, 0.5]), tc=st.sampled_from([1e-3, 1.0]),
       eps=st.sampled_from([0.0, 1e-6]), denominator=st.sampled_from(["paper", "optax"]),
       clip=st.sampled_from([None, 1.0]))
def test_zero_denormal_tiny_huge_and_huge_ratio_match_reference(
    seed, w_mag, g_mag, wd, tc, eps, denominator, clip
):
    params = _as_float32_flushed(random_tree(seed, ALL_SHAPES, scale=w_mag))
    grads = _as_float32_flushed(random_tree(seed + 1, ALL_SHAPES, scale=g_mag))
    out, state = _update(_to_jax(random_tree(seed + 1, ALL_SHAPES, scale=g_mag)),
                         _to_jax(random_tree(seed, ALL_SHAPES, scale=w_mag)), wd=wd, tc=tc,
                         eps=eps, denominator=denominator, clip=clip)
    for w, g, o, r in zip(jax.tree.leaves(params), jax.tree.leaves(grads),
                          jax.tree.leaves(out), jax.tree.leaves(state.trust_ratio), strict=True):
        want = trust_ratio(w, g, wd=wd, tc=tc, eps=eps, denominator=denominator, clip=clip)
        want_out = want * (g + wd * w)
        assert np.all(np.isfinite(np.asarray(o))), (want, float(r))
        scale = float(np.max(np.abs(want_out), initial=0.0))
        np.testing.assert_allclose(np.asarray(o, np.float64), want_out, rtol=1e-5,
                                   atol=1e-6 * scale + 1e-37)
        if want > float(np.finfo(np.float32).max):
            assert float(r) == np.inf  # the ratio itself is not representable; the step is
        else:
            np.testing.assert_allclose(float(r), want, rtol=1e-5, atol=1e-37)


def test_tiny_gradient_gets_the_normalised_step_not_the_zero_norm_fallback():
    """g = 1e-25 (squares underflow in float32): the step is tc * ||w|| * g / ||g||."""
    params = {"k": jnp.full((4, 4), 2.0)}  # ||w|| = 8
    grads = {"k": jnp.full((4, 4), 1e-25)}  # ||g|| = 4e-25
    tx = lars_jax.scale_by_lars_trust_ratio(trust_coefficient=1e-3)
    out, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(float(state.grad_norm["k"]), 4e-25, rtol=1e-6)
    # 1e-3 * 8 * 1e-25 / 4e-25 = 2e-3 per entry.
    np.testing.assert_allclose(np.asarray(out["k"]), 2e-3, rtol=1e-6)


# ------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("where", ["param", "grad"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_param_or_grad_gives_non_finite_update_like_optax_lars(where, bad):
    params = {"k": jnp.ones((3, 3)), "b": jnp.ones(3)}
    grads = {"k": jnp.full((3, 3), 0.1), "b": jnp.full(3, 0.1)}
    tree = params if where == "param" else grads
    tree["k"] = tree["k"].at[0, 0].set(bad)
    for tx in (lars_jax.lars(0.1, weight_decay=1e-4), lars_jax.larc(0.1, weight_decay=1e-4),
               optax.lars(0.1, weight_decay=1e-4)):
        out, _ = tx.update(grads, tx.init(params), params)
        assert not np.all(np.isfinite(np.asarray(out["k"]))), tx
    stats = lars_jax.trust_ratio_stats(
        lars_jax.lars(0.1).update(grads, lars_jax.lars(0.1).init(params), params)[1]
    )
    assert np.isnan(float(stats["trust_ratio"]["k"]))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_per_example_norms_give_nan_update_not_a_larger_step(bad):
    """Before: NaN norms took the ratio-1 fallback, a finite step 1/tc times too large."""
    params = {"k": jnp.ones((3, 3))}
    grads = {"k": jnp.full((3, 3), 0.1)}
    norms = {"k": jnp.array([0.2, bad, 0.4])}
    tx = lars_jax.clars(0.1, trust_coefficient=1e-3)
    out, state = jax.jit(tx.update)(grads, tx.init(params), params, per_example_norms=norms)
    assert np.all(np.isnan(np.asarray(out["k"])))
    assert np.isnan(float(lars_jax.trust_ratio_stats(state)["trust_ratio"]["k"]))
    # A NaN check on the new params (the trainer's NaN policy) sees it.
    assert not np.all(np.isfinite(np.asarray(optax.apply_updates(params, out)["k"])))


def test_zero_norms_still_take_the_documented_fallback():
    params = {"k": jnp.zeros((2, 2))}
    grads = {"k": jnp.full((2, 2), 0.5)}
    tx = lars_jax.scale_by_lars_trust_ratio(weight_decay=0.1)
    out, state = tx.update(grads, tx.init(params), params)
    assert float(state.trust_ratio["k"]) == 1.0
    np.testing.assert_allclose(np.asarray(out["k"]), 0.5)


# ------------------------------------------------------------------- float64 (x64)


def test_float64_params_get_float64_norms_under_x64():
    """Relative error of the ratio vs the float64 reference: ~1e-16, not float32's ~1e-7."""
    with jax.enable_x64(True):
        tree = random_tree(3, [3, 5, 1])
        grads = random_tree(4, [3, 5, 1], scale=0.3)
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
        grads64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), grads)
        for denominator in ("paper", "optax"):
            tx = lars_jax.scale_by_lars_trust_ratio(weight_decay=1e-3, trust_coefficient=0.02,
                                                    denominator=denominator)
            state = tx.init(params64)
            stats = lars_jax.trust_ratio_stats(state)
            assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(stats))
            out, state = jax.jit(tx.update)(grads64, state, params64)
            for w, g, r, o in zip(jax.tree.leaves(tree), jax.tree.leaves(grads),
                                  jax.tree.leaves(state.trust_ratio), jax.tree.leaves(out),
                                  strict=True):
                assert o.dtype == jnp.float64
                want = trust_ratio(w, g, wd=1e-3, tc=0.02, denominator=denominator)
                assert abs(float(r) - want) / want < 1e-13
        # The optax form equals optax.lars in float64 to ~1e-15 as well.
        ours = lars_jax.lars(0.1, weight_decay=1e-3, trust_coefficient=0.02,
                             denominator="optax", mask=True)
        ref = optax.lars(0.1, weight_decay=1e-3, trust_coefficient=0.02)
        u1, u2 = jax.jit(lambda g, p: [tx.update(g, tx.init(p), p)[0] for tx in (ours, ref)])(
            grads64, params64)
        chex.assert_trees_all_close(u1, u2, rtol=1e-13, atol=0)


# ----------------------------------------------------- optax wrappers and misconfigs


def test_clars_inside_optax_masked_without_mask_compatible_extra_args():
    params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    norms = {"k": jnp.array([0.5, 1.5]), "b": jnp.array([1.0, 2.0])}
    ratio = lars_jax.scale_by_clars_trust_ratio(trust_coefficient=1.0)
    plain = optax.masked(ratio, lars_jax.default_mask)
    flagged = optax.masked(ratio, lars_jax.default_mask, mask_compatible_extra_args=True)
    out1, _ = plain.update(grads, plain.init(params), params, per_example_norms=norms)
    out2, _ = flagged.update(grads, flagged.init(params), params, per_example_norms=norms)
    chex.assert_trees_all_equal(out1, out2)
    # ratio = ||w|| / mean(norms) = sqrt(6) / 1.0
    np.testing.assert_allclose(np.asarray(out1["k"]), 0.1 * np.sqrt(6.0), rtol=1e-6)


def test_lars_rejects_per_example_norms():
    params = {"k": jnp.ones((3, 2))}
    norms = {"k": jnp.ones(4)}
    for tx in (lars_jax.lars(0.1), lars_jax.larc(0.1), lars_jax.scale_by_lars_trust_ratio(),
               optax.inject_hyperparams(lars_jax.lars)(learning_rate=0.1)):
        with pytest.raises(ValueError, match="clars"):
            tx.update(params, tx.init(params), params, per_example_norms=norms)


def test_trust_ratio_stats_merges_the_groups_of_multi_transform():
    params = {"a": jnp.full((2, 2), 2.0), "b": jnp.full((3, 3), 3.0), "bias": jnp.ones(2)}
    grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
    tx = optax.multi_transform(
        {"fast": lars_jax.lars(0.1, trust_coefficient=1.0),
         "slow": lars_jax.larc(0.1, trust_coefficient=0.5)},
        {"a": "fast", "b": "slow", "bias": "fast"},
    )
    _, state = tx.update(grads, tx.init(params), params)
    stats = lars_jax.trust_ratio_stats(state)
    # ||w|| / ||g||: a: 4 / 1 = 4 (tc 1); b: 9 / 1.5 * 0.5 = 3, clipped to 1 (LARC)
    np.testing.assert_allclose(float(stats["trust_ratio"]["a"]), 4.0, rtol=1e-6)
    np.testing.assert_allclose(float(stats["trust_ratio"]["b"]), 1.0, rtol=1e-6)
    assert isinstance(stats["trust_ratio"]["bias"], optax.MaskedNode)
    # Groups masked at a prefix (whole layers), each with the default mask inside.
    layered = {"l0": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)},
               "l1": {"kernel": jnp.full((3, 3), 3.0), "bias": jnp.ones(3)}}
    tx = optax.multi_transform({"a": lars_jax.lars(0.1), "b": lars_jax.larc(0.1)},
                               {"l0": "a", "l1": "b"})
    _, state = tx.update(jax.tree.map(jnp.ones_like, layered), tx.init(layered), layered)
    stats = lars_jax.trust_ratio_stats(state)
    np.testing.assert_allclose(float(stats["param_norm"]["l0"]["kernel"]), 4.0, rtol=1e-6)
    np.testing.assert_allclose(float(stats["param_norm"]["l1"]["kernel"]), 9.0, rtol=1e-6)
    assert isinstance(stats["trust_ratio"]["l1"]["bias"], optax.MaskedNode)
    twice = optax.chain(lars_jax.lars(0.1), lars_jax.lars(0.1))
    with pytest.raises(ValueError, match="same tensor"):
        lars_jax.trust_ratio_stats(twice.init(params))


# ------------------------------------------------- one factory, state type (issue 26)


def test_weight_decay_schedule_keeps_the_same_state_type_and_counts_steps():
    """Before: a schedule wrapped the transform in inject_hyperparams (another state)."""
    params = {"k": jnp.ones((2, 2))}
    for factory in (lars_jax.scale_by_lars_trust_ratio, lars_jax.scale_by_clars_trust_ratio):
        plain = factory(weight_decay=0.1).init(params)
        sched = factory(weight_decay=optax.linear_schedule(0.1, 0.2, 5)).init(params)
        assert isinstance(sched, lars_jax.LarsTrustRatioState)
        assert jax.tree.structure(plain) == jax.tree.structure(sched)
    tx = lars_jax.lars(0.1, weight_decay=lambda t: 0.1 * (t + 1))
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(
        lars_jax.lars(0.1, weight_decay=0.1).init(params))
    tx = lars_jax.scale_by_lars_trust_ratio(weight_decay=lambda t: 0.5 * t)
    state = tx.init(params)
    for t in range(3):
        out, state = jax.jit(tx.update)({"k": jnp.zeros((2, 2))}, state, params)
        np.testing.assert_allclose(np.asarray(out["k"]), 0.5 * t)  # zero grad: wd_t * w
        assert int(state.count) == t + 1


# ------------------------------------------------------------- complex (issue 24)


def _complex(seed, shape, scale=1.0):
    rng = np.random.default_rng(seed)
    return scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


@pytest.mark.parametrize("denominator", ["paper", "optax"])
@pytest.mark.parametrize("scale", [1.0, 1e-25, 1e20])
def test_complex_tensors_get_real_norms_and_the_reference_ratio(denominator, scale):
    """Before: the norm of [3+4j, 0] was 3+4j and the gradient norm 0 (ratio 1)."""
    w64 = {"k": _complex(1, (4, 3), scale), "v": np.array([3 + 4j, 0.0])}
    g64 = {"k": _complex(2, (4, 3), 0.3 * scale), "v": np.array([0.0, 1 - 1j])}
    w = jax.tree.map(lambda x: jnp.asarray(x, jnp.complex64), w64)
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.complex64), g64)
    tx = lars_jax.scale_by_lars_trust_ratio(weight_decay=0.01, trust_coefficient=0.1,
                                            denominator=denominator)
    out, state = jax.jit(tx.update)(g, tx.init(w), w)
    for k in ("k", "v"):
        want = trust_ratio(w64[k], g64[k], wd=0.01, tc=0.1, denominator=denominator)
        assert state.trust_ratio[k].dtype == jnp.float32
        np.testing.assert_allclose(float(state.trust_ratio[k]), want, rtol=1e-5)
        np.testing.assert_allclose(float(state.param_norm[k]), np.linalg.norm(w64[k]),
                                   rtol=1e-6)
        np.testing.assert_allclose(np.asarray(out[k], np.complex128),
                                   want * (g64[k] + 0.01 * w64[k]), rtol=1e-5, atol=0)
    np.testing.assert_allclose(float(state.param_norm["v"]), 5.0 * 1, rtol=1e-7)


def test_complex_clars_and_larc_ratios_are_real_and_match_the_reference():
    w64, g64 = _complex(7, (3, 4)), _complex(8, (3, 4), 0.05)
    norms = np.array([0.5, 1.5, 1.0])
    w, g = {"k": jnp.asarray(w64, jnp.complex64)}, {"k": jnp.asarray(g64, jnp.complex64)}
    clars = lars_jax.scale_by_clars_trust_ratio(weight_decay=0.01, trust_coefficient=0.1)
    out, st = clars.update(g, clars.init(w), w, per_example_norms={"k": jnp.asarray(norms)})
    want = trust_ratio(w64, g64, wd=0.01, tc=0.1, grad_norm=norms.mean())
    np.testing.assert_allclose(float(st.trust_ratio["k"]), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["k"], np.complex128), want * (g64 + 0.01 * w64),
                               rtol=1e-5)
    larc = lars_jax.scale_by_lars_trust_ratio(trust_coefficient=1.0, clip=1.0)
    _, st = larc.update(g, larc.init(w), w)
    want = trust_ratio(w64, g64, wd=0.0, tc=1.0, clip=1.0)  # ||w|| / ||g|| ~ 20: clipped
    assert want == 1.0 and float(st.trust_ratio["k"]) == 1.0


def test_complex_optax_form_equals_optax_lars_per_step():
    w = {"k": jnp.asarray(_complex(3, (5, 4)), jnp.complex64)}
    g = {"k": jnp.asarray(_complex(4, (5, 4), 0.2), jnp.complex64)}
    ours = lars_jax.lars(0.3, 1e-3, trust_coefficient=0.02, denominator="optax")
    ref = optax.lars(0.3, 1e-3, trust_coefficient=0.02)
    a, _ = ours.update(g, ours.init(w), w)
    b, _ = ref.update(g, ref.init(w), w)
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=0)


def test_layer_diagnostics_norms_of_complex_tensors_are_real():
    w64, g64 = _complex(5, (3, 3)), _complex(6, (3, 3), 0.1)
    d = lars_jax.diagnostics.layer_diagnostics(
        {"k": jnp.asarray(w64, jnp.complex64)}, {"k": jnp.asarray(g64, jnp.complex64)})
    np.testing.assert_allclose(float(d["k/w_sqnorm"]), np.sum(np.abs(w64) ** 2), rtol=1e-6)
    np.testing.assert_allclose(float(d["k/g_sqnorm"]), np.sum(np.abs(g64) ** 2), rtol=1e-6)
    cos = np.real(np.vdot(w64, g64)) / (np.linalg.norm(w64) * np.linalg.norm(g64))
    np.testing.assert_allclose(float(d["k/cos_w_g"]), cos, rtol=1e-5, atol=1e-7)


# ----------------------------------------- the one-reduction norm and its fallback


@pytest.mark.parametrize("case", ["mixed_tiny", "huge", "zero", "nan", "ordinary"])
def test_norm_is_exact_where_the_plain_sum_of_squares_loses_digits(case):
    """1e6 entries of 1e-20 (squares flushed to 0) beside one 1e-15: exact only scaled."""
    n = 1_000_000
    x = {"mixed_tiny": np.full(n, 1e-20), "huge": np.full(n, 3e20), "zero": np.zeros(n),
         "nan": np.full(n, np.nan),
         "ordinary": np.random.default_rng(0).standard_normal(n)}[case]
    if case == "mixed_tiny":
        x[0] = 1e-15
    x32 = np.asarray(x, np.float32)
    want = np.sqrt(np.sum(np.asarray(x32, np.float64) ** 2))
    got = float(jax.jit(lambda v: lars_jax.trust_ratio._norm(v))(jnp.asarray(x32)))
    if case == "nan":
        assert np.isnan(got)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-6)
