"""Tests of scale_by_lars_trust_ratio, scale_by_clars_trust_ratio and trust_ratio_stats."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import SHAPES, random_tree, trust_ratio
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import lars_jax

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate))
shape_ids = st.lists(st.integers(0, len(SHAPES) - 1), min_size=1, max_size=4)


def _to_jax(tree, dtype=jnp.float32):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


@SETTINGS
@given(ids=shape_ids, seed=st.integers(0, 2**16),
       wd=st.sampled_from([0.0, 1e-3, 0.5]), tc=st.sampled_from([1e-3, 1.0]),
       eps=st.sampled_from([0.0, 1e-3]), denominator=st.sampled_from(["paper", "optax"]),
       clip=st.sampled_from([None, 0.01, 1.0]))
def test_ratio_and_output_match_reference(ids, seed, wd, tc, eps, denominator, clip):
    params = random_tree(seed, ids)
    grads = random_tree(seed + 1, ids, scale=0.2)
    tx = lars_jax.scale_by_lars_trust_ratio(weight_decay=wd, trust_coefficient=tc, eps=eps,
                                            denominator=denominator, clip=clip)
    out, state = jax.jit(tx.update)(_to_jax(grads), tx.init(_to_jax(params)), _to_jax(params))
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
        assert all(x.dtype == jnp.float32 and x.shape == () for x in jax.tree.leaves(state))


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


@SETTINGS
@given(ids=shape_ids, seed=st.integers(0, 2**16), n=st.integers(1, 6),
       wd=st.sampled_from([0.0, 1e-3]), identical=st.booleans())
def test_clars_ratio_at_most_lars_ratio_equal_when_examples_agree(ids, seed, n, wd, identical):
    params = random_tree(seed, ids)
    per_ex = jax.tree.map(lambda w: _per_example(seed + w.size, np.shape(w), n, identical),
                          params)
    grads = jax.tree.map(lambda g: g.mean(axis=0), per_ex)
    norms = jax.tree.map(lambda g: np.sqrt((g.reshape(n, -1) ** 2).sum(axis=1)), per_ex)
    kw = dict(weight_decay=wd, trust_coefficient=0.01)
    lars_tx = lars_jax.scale_by_lars_trust_ratio(**kw)
    clars_tx = lars_jax.scale_by_clars_trust_ratio(**kw)
    p, g = _to_jax(params), _to_jax(grads)
    _, s_lars = lars_tx.update(g, lars_tx.init(p), p)
    _, s_clars = jax.jit(clars_tx.update)(g, clars_tx.init(p), p,
                                          per_example_norms=_to_jax(norms))
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
