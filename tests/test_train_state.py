"""Tests of lars_jax.flax_train_state.TrainState (CLARS with a linen TrainState)."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import lars_jax
from lars_jax.flax_train_state import TrainState


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.relu(nn.Dense(8)(x)))


@functools.cache
def _setup():
    """The tests' model, params, loss and batch (built once, initialised under jit)."""
    model = _MLP()
    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = jnp.arange(16) % 2
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return model, params, loss_fn, x, y


def test_flax_train_state_cannot_pass_per_example_norms():
    """The problem this class solves: Flax treats the norms as a dataclass field."""
    model, params, loss_fn, x, y = _setup()
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=lars_jax.clars(0.1))
    _, grads, norms = jax.jit(functools.partial(lars_jax.value_grad_and_norms, loss_fn))(
        params, x, y)
    with pytest.raises((ValueError, TypeError)):
        state.apply_gradients(grads=grads, per_example_norms=norms)


def test_apply_gradients_with_norms_equals_clars_update_and_reference():
    model, params, loss_fn, x, y = _setup()
    hp = dict(learning_rate=0.5, weight_decay=1e-3, trust_coefficient=0.02, momentum=0.9)
    tx = lars_jax.clars(**hp)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state):
        _, grads, norms = lars_jax.value_grad_and_norms(loss_fn, state.params, x, y)
        return state.apply_gradients(grads=grads, per_example_norms=norms), grads, norms

    new_state, grads, norms = step(state)
    assert int(new_state.step) == 1
    want = lars_jax.testing.reference_lars_updates(
        params, [grads], per_example_norms_per_step=[norms], **hp)[0]
    got = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                       new_state.params, params)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
    stats = lars_jax.trust_ratio_stats(new_state.opt_state)
    np.testing.assert_allclose(stats["grad_norm"]["Dense_0"]["kernel"],
                               np.mean(norms["Dense_0"]["kernel"]), rtol=1e-6)


def test_without_norms_it_is_flax_train_state():
    model, params, loss_fn, x, y = _setup()
    grads = jax.jit(jax.grad(loss_fn))(params, x, y)
    ours = TrainState.create(apply_fn=model.apply, params=params, tx=lars_jax.lars(0.5))
    theirs = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                           tx=lars_jax.lars(0.5))
    # Both steps in one program: the same computation must give the same bits.
    ours_params, theirs_params = jax.jit(
        lambda a, b, g: (a.apply_gradients(grads=g).params, b.apply_gradients(grads=g).params)
    )(ours, theirs, grads)
    chex.assert_trees_all_equal(ours_params, theirs_params)


def test_subclass_with_batch_stats_and_extra_fields():
    class BNState(TrainState):
        batch_stats: dict

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            h = nn.Dense(4)(x)
            h = nn.BatchNorm(use_running_average=not train)(h)
            return nn.Dense(2)(nn.relu(h))

    net = Net()
    x = jax.random.normal(jax.random.key(0), (8, 3))
    y = jnp.arange(8) % 2
    variables = jax.jit(net.init)(jax.random.key(1), x)
    state = BNState.create(apply_fn=net.apply, params=variables["params"],
                           batch_stats=variables["batch_stats"], tx=lars_jax.clars(0.1))

    def loss_fn(p, x, y):
        logits, upd = state.apply_fn({"params": p, "batch_stats": state.batch_stats}, x,
                                     mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, upd["batch_stats"]

    @jax.jit
    def step(state):
        (_, new_stats), grads, norms = lars_jax.value_grad_and_norms(
            loss_fn, state.params, x, y, has_aux=True)
        return state.apply_gradients(grads=grads, per_example_norms=norms,
                                     batch_stats=new_stats), new_stats

    new, new_stats = step(state)
    assert int(new.step) == 1
    chex.assert_trees_all_equal(new.batch_stats, new_stats)
    assert not np.allclose(new.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
