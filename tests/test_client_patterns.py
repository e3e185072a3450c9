"""The training patterns users already write, run with lars_jax (issue 24).

Each pattern is checked against a reference computed independently of the code under test:
``vmap(grad)`` of the per-example loss where the per-example gradient is the plain one,
and, with BatchNorm in training mode, each example's contribution computed from a plain
JAX model whose examples each hold their own copy of the parameters (the documented
semantics). Tiny models, B = 8. Every computation, the reference included, runs inside
one jitted function per test: eager model initialisation, gradients and optimizer
updates would compile one XLA program per primitive and shape.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lars_jax

B = 8
WEIGHT_DECAY = 1e-2


@functools.cache
def _data(features=5, seed=0):
    x = jax.random.normal(jax.random.key(seed), (B, features))
    return x, jnp.arange(B) % 3


# ------------------------------------------- linen, ImageNet-example style TrainState step


class _BNNet(nn.Module):
    """Dense -> BatchNorm -> relu -> Dense, the shape of the example's ResNet in small."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.Dense(6, name="dense0")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        return nn.Dense(3, name="head")(nn.relu(h))


class _State(lars_jax.TrainState):
    batch_stats: dict


def _l2(params):  # the example's penalty: kernels only, 0.5 * wd * sum(w ** 2)
    return 0.5 * WEIGHT_DECAY * sum(
        jnp.sum(w**2) for w in jax.tree.leaves(params) if w.ndim > 1)


def _linen_loss(params, batch_stats, x, y):
    logits, new = _BNNet().apply({"params": params, "batch_stats": batch_stats}, x,
                                 mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + _l2(params), new["batch_stats"]


def _bn_contributions(params, x, y):
    """Each example's contribution ``B * dL/dtheta_i`` plus the penalty's gradient, from a
    plain-JAX copy of _BNNet in which example i holds its own parameters theta_i."""
    copies = jax.tree.map(lambda w: jnp.broadcast_to(w, (B, *w.shape)), params)

    def loss(c):
        h = jnp.einsum("bi,bio->bo", x, c["dense0"]["kernel"]) + c["dense0"]["bias"]
        mean = h.mean(0)
        var = jnp.mean(h * h, 0) - mean * mean
        h = (h - mean) / jnp.sqrt(var + 1e-5) * c["bn"]["scale"] + c["bn"]["bias"]
        logits = jnp.einsum("bi,bio->bo", jax.nn.relu(h), c["head"]["kernel"]) + c["head"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    per_copy = jax.grad(loss)(copies)
    penalty = jax.grad(_l2)(params)
    contrib = jax.tree.map(lambda g, q: B * g + q, per_copy, penalty)
    return jax.tree.map(lambda c: jnp.linalg.norm(c.reshape(B, -1), axis=1), contrib)


@pytest.mark.parametrize("factory", [lars_jax.lars, lars_jax.clars])
def test_linen_trainstate_step_with_l2_penalty(factory):
    x, y = _data()
    variables = jax.jit(_BNNet().init)(jax.random.key(1), x)
    params = jax.tree.map(lambda w: w + 0.05, variables["params"])
    tx = factory(1.0, trust_coefficient=0.02, momentum=0.9)
    state = _State.create(apply_fn=_BNNet().apply, params=params, tx=tx,
                          batch_stats=variables["batch_stats"])
    clars = factory is lars_jax.clars

    @jax.jit
    def train_step(state, x, y):
        if clars:
            (loss, stats), grads, norms = lars_jax.value_grad_and_norms(
                _linen_loss, state.params, state.batch_stats, x, y, has_aux=True)
            new = state.apply_gradients(grads=grads, per_example_norms=norms,
                                        batch_stats=stats)
        else:
            (loss, stats), grads = jax.value_and_grad(_linen_loss, has_aux=True)(
                state.params, state.batch_stats, x, y)
            norms = None
            new = state.apply_gradients(grads=grads, batch_stats=stats)
        return new, loss, grads, norms

    @jax.jit
    def reference(params, batch_stats):
        (loss, stats), grads = jax.value_and_grad(_linen_loss, has_aux=True)(
            params, batch_stats, x, y)
        norms = _bn_contributions(params, x, y) if clars else None
        # The step: the optimizer applied to the independent gradient and norms.
        extra = {} if norms is None else {"per_example_norms": norms}
        updates, _ = tx.update(grads, tx.init(params), params, **extra)
        return loss, stats, grads, norms, optax.apply_updates(params, updates)

    new, loss, grads, norms = train_step(state, x, y)
    ref_loss, ref_stats, ref_grads, ref_norms, expected = reference(
        params, variables["batch_stats"])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(new.batch_stats, ref_stats, rtol=1e-6)
    if clars:
        chex.assert_trees_all_close(norms, ref_norms, rtol=2e-4, atol=1e-6)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------ NNX, tutorial style (Dropout and BatchNorm)


class _NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.linear1 = nnx.Linear(5, 6, rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.dropout = nnx.Dropout(0.25, rngs=rngs)
        self.linear2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.linear2(self.dropout(nnx.relu(self.bn(self.linear1(x)))))


def _nnx_loss(model, x, y):
    logits = model(x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    penalty = sum(jnp.sum(w**2) for w in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return ce + WEIGHT_DECAY * penalty, logits


def test_nnx_tutorial_style_train_and_eval_steps():
    x, y = _data()
    model = nnx.jit(lambda: _NNXNet(nnx.Rngs(0)))()
    reference = nnx.clone(model)
    tx = lars_jax.clars(0.5, trust_coefficient=0.02)
    optimizer = nnx.jit(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param))(model)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        (loss, logits), grads, norms = lars_jax.nnx_value_grad_and_norms(
            _nnx_loss, model, x, y, has_aux=True)
        optimizer.update(model, grads, per_example_norms=norms)
        return loss, grads

    model.train()
    loss, grads = train_step(model, optimizer, x, y)
    reference.train()
    (ref_loss, _), ref_grads = nnx.jit(nnx.value_and_grad(_nnx_loss, has_aux=True))(
        reference, x, y)
    # Same dropout mask (same RNG stream) and same BatchNorm statistics as nnx.grad.
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(nnx.state(model, nnx.BatchStat),
                                nnx.state(reference, nnx.BatchStat), rtol=1e-6)
    assert int(model.dropout.rngs.count[...]) == int(reference.dropout.rngs.count[...])

    # Eval mode: running statistics, no dropout, so the examples are independent.
    model.eval()

    @nnx.jit
    def eval_norms(model, x, y):
        _, _, norms = lars_jax.nnx_value_grad_and_norms(_nnx_loss, model, x, y, has_aux=True)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def per_example(p, xi, yi):
            return _nnx_loss(nnx.merge(graphdef, p, rest), xi[None], yi[None])[0]

        return norms, lars_jax.per_example_norms_vmap(per_example, params, x, y)

    norms, expected = eval_norms(model, x, y)
    chex.assert_trees_all_close(norms, expected, rtol=1e-4, atol=1e-7)


def test_functional_nnx_split_merge_under_jax_jit():
    x, y = _data()
    graphdef, state = nnx.split(nnx.jit(lambda: nnx.Linear(5, 3, rngs=nnx.Rngs(2)))())

    def loss(model, x, y):
        ce = optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        return ce + WEIGHT_DECAY * jnp.sum(model.kernel[...] ** 2)

    @jax.jit
    def step(state, x, y):
        model = nnx.merge(graphdef, state)
        _, grads, norms = lars_jax.nnx_value_grad_and_norms(loss, model, x, y)
        return grads, norms

    @jax.jit
    def reference(state, x, y):
        params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
        norms = lars_jax.per_example_norms_vmap(
            lambda p, xi, yi: loss(nnx.merge(graphdef, p), xi[None], yi[None]), params, x, y)
        return nnx.grad(loss)(nnx.merge(graphdef, state), x, y), norms

    grads, norms = step(state, x, y)
    ref_grads, expected = reference(state, x, y)
    chex.assert_trees_all_close(norms, expected, rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-7)


# ------------------------------------------ optax chain with gradient accumulation


def test_accumulation_in_an_optax_chain_equals_one_big_batch_step():
    """Two micro-batches through multi_steps (CLARS) / optax.MultiSteps (LARS) give the
    step of the whole batch, norms from the per-example reference."""
    model = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(3)])
    x, y = _data()
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                + WEIGHT_DECAY * sum(jnp.sum(w**2) for w in jax.tree.leaves(p)))

    def per_example(p, xi, yi):
        return loss_fn(p, xi[None], yi[None])

    def clars():
        return optax.chain(optax.clip_by_global_norm(100.0),
                           lars_jax.clars(0.5, trust_coefficient=0.02, momentum=0.9))

    @jax.jit
    def accumulated_and_whole(params):
        accumulated = lars_jax.multi_steps(clars(), every_k_schedule=2)
        state = accumulated.init(params)
        for xs, ys in zip(jnp.split(x, 2), jnp.split(y, 2), strict=True):
            _, grads, norms = lars_jax.value_grad_and_norms(loss_fn, params, xs, ys)
            clars_acc, state = accumulated.update(grads, state, params,
                                                  per_example_norms=norms)
        whole = clars()
        clars_whole, _ = whole.update(
            jax.grad(loss_fn)(params, x, y), whole.init(params), params,
            per_example_norms=lars_jax.per_example_norms_vmap(per_example, params, x, y))

        lars_acc = optax.MultiSteps(lars_jax.lars(0.5, trust_coefficient=0.02), 2)
        state = lars_acc.init(params)
        for xs, ys in zip(jnp.split(x, 2), jnp.split(y, 2), strict=True):
            lars_acc_updates, state = lars_acc.update(jax.grad(loss_fn)(params, xs, ys),
                                                      state, params)
        lars_whole = lars_jax.lars(0.5, trust_coefficient=0.02)
        lars_whole_updates, _ = lars_whole.update(jax.grad(loss_fn)(params, x, y),
                                                  lars_whole.init(params), params)
        return clars_acc, clars_whole, lars_acc_updates, lars_whole_updates

    clars_acc, clars_whole, lars_acc, lars_whole = accumulated_and_whole(params)
    chex.assert_trees_all_close(clars_acc, clars_whole, rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(lars_acc, lars_whole, rtol=1e-4, atol=1e-7)


# ------------------------------------------ complex parameters


def test_complex_parameters_get_one_clear_line_from_the_per_example_norms():
    x = jnp.ones((B, 4), jnp.complex64)
    model = nn.Dense(2, dtype=jnp.complex64, param_dtype=jnp.complex64)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]

    def loss_fn(p, x):
        return jnp.mean(jnp.abs(model.apply({"params": p}, x)) ** 2)

    with pytest.raises(ValueError, match=r"^value_grad_and_norms: parameter \w+ is complex"):
        lars_jax.value_grad_and_norms(loss_fn, params, x)
    linear = nnx.jit(lambda: nnx.Linear(4, 2, param_dtype=jnp.complex64,
                                        dtype=jnp.complex64, rngs=nnx.Rngs(0)))()
    with pytest.raises(ValueError, match="is complex"):
        lars_jax.nnx_value_grad_and_norms(lambda m, x: jnp.mean(jnp.abs(m(x)) ** 2), linear, x)
