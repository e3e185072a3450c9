"""Tests of lars_jax.testing, the public float64 reference of Algorithm 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax import testing


def test_reference_trust_ratio_hand_computed():
    w = np.array([[3.0, 4.0]])  # ||w|| = 5
    g = np.array([[0.0, 0.5]])  # ||g|| = 0.5
    # paper: 0.1 * 5 / (0.5 + 0.2 * 5) = 0.5 / 1.5
    assert testing.reference_trust_ratio(w, g, weight_decay=0.2, trust_coefficient=0.1) == (
        pytest.approx(1 / 3, rel=1e-15))
    # optax: 0.1 * 5 / ||g + 0.2 w|| = 0.5 / ||(0.6, 1.3)||
    want = 0.5 / np.hypot(0.6, 1.3)
    assert testing.reference_trust_ratio(
        w, g, weight_decay=0.2, trust_coefficient=0.1, denominator="optax"
    ) == pytest.approx(want, rel=1e-15)
    # CLARS: the mean of per-example norms replaces ||g||; LARC clips.
    assert testing.reference_trust_ratio(
        w, g, weight_decay=0.0, trust_coefficient=1.0, grad_norm=2.0) == 2.5
    assert testing.reference_trust_ratio(
        w, g, weight_decay=0.0, trust_coefficient=1.0, grad_norm=2.0, clip=1.0) == 1.0


def test_reference_fallback_and_non_finite():
    w, g = np.ones(3), np.ones(3)
    assert testing.reference_trust_ratio(0 * w, g, weight_decay=0.1, trust_coefficient=1) == 1
    assert testing.reference_trust_ratio(w, 0 * g, weight_decay=0.1, trust_coefficient=1) == 1
    assert np.isnan(testing.reference_trust_ratio(w, np.nan * g, weight_decay=0.1,
                                                  trust_coefficient=1))
    with pytest.raises(ValueError, match="denominator"):
        testing.reference_trust_ratio(w, g, weight_decay=0, trust_coefficient=1,
                                      denominator="Paper")


def test_reference_lars_updates_two_steps_by_hand():
    """w = (3, 4) kernel and a bias; lr 0.5, m 0.9, tc 0.1, wd 0."""
    params = {"b": np.array([1.0]), "k": np.array([[3.0, 4.0]])}
    grads = {"b": np.array([2.0]), "k": np.array([[0.0, 0.5]])}
    ups = testing.reference_lars_updates(params, [grads, grads], learning_rate=0.5,
                                         trust_coefficient=0.1, momentum=0.9)
    # step 1: kernel ratio 0.1 * 5 / 0.5 = 1 -> v = 0.5 * g; bias (ndim 1): v = 0.5 * 2
    np.testing.assert_allclose(ups[0]["k"], [[0.0, -0.25]])
    np.testing.assert_allclose(ups[0]["b"], [-1.0])
    # step 2: w = (3, 3.75), ||w|| = 4.8023, ratio = 0.1 * 4.8023 / 0.5
    r = 0.1 * np.hypot(3.0, 3.75) / 0.5
    np.testing.assert_allclose(ups[1]["k"], [[0.0, -(0.9 * 0.25 + 0.5 * r * 0.5)]])
    np.testing.assert_allclose(ups[1]["b"], [-(0.9 * 1.0 + 1.0)])


def test_schedules_prefix_masks_and_callable_masks():
    params = {"a": {"k": np.ones((2, 2)), "b": np.ones(2)}, "c": np.ones((2, 2))}
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    lr = lambda t: 0.1 * (t + 1)  # noqa: E731
    prefix = testing.reference_lars_updates(params, [grads] * 2, learning_rate=lr,
                                            momentum=0.0, mask={"a": False, "c": True})
    # Masked-out group "a": plain SGD with the scheduled rate.
    np.testing.assert_allclose(prefix[1]["a"]["k"], -0.2 * 0.1)
    called = testing.reference_lars_updates(params, [grads] * 2, learning_rate=lr,
                                            momentum=0.0,
                                            mask=lambda p: {"a": False, "c": True})
    jax.tree.map(np.testing.assert_array_equal, prefix, called)


@pytest.mark.parametrize("factory", [lars_jax.lars, lars_jax.larc])
def test_assert_matches_reference_accepts_lars_jax(factory):
    rng = np.random.default_rng(0)
    params = {"k": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal(3), jnp.float32)}
    grads = [jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape),
                                                jnp.float32), params) for _ in range(3)]
    hp = dict(learning_rate=0.3, weight_decay=1e-3, trust_coefficient=0.02, momentum=0.9)
    clip = 1.0 if factory is lars_jax.larc else None
    testing.assert_matches_reference(factory(**hp), params, grads, clip=clip, **hp)


def test_assert_matches_reference_with_clars_norms_and_a_user_chain():
    rng = np.random.default_rng(1)
    params = {"k": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}
    grads = [{"k": jnp.asarray(0.1 * rng.standard_normal((4, 3)), jnp.float32)}] * 2
    norms = [{"k": jnp.asarray(rng.uniform(0.5, 1.5, 8), jnp.float32)}] * 2
    hp = dict(learning_rate=0.3, trust_coefficient=0.02, momentum=0.5)
    testing.assert_matches_reference(lars_jax.clars(**hp), params, grads,
                                     per_example_norms_per_step=norms, **hp)
    # A hand-built chain equal to LARS with mask=True passes ...
    chain = optax.chain(lars_jax.scale_by_lars_trust_ratio(trust_coefficient=0.02),
                        optax.scale_by_learning_rate(0.3), optax.trace(0.5))
    testing.assert_matches_reference(chain, params, grads, mask=True, **hp)
    # ... and plain momentum SGD does not.
    with pytest.raises(AssertionError, match="step 0"):
        testing.assert_matches_reference(optax.sgd(0.3, momentum=0.5), params, grads,
                                          mask=True, **hp)
