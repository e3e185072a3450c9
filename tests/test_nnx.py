"""Tests of lars_jax.nnx_value_grad_and_norms (Flax NNX) and CLARS/LARS with nnx.Optimizer."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lars_jax
import lars_jax.testing


class _Mixed(nnx.Module):
    """Every supported per-example layer (no BatchNorm: examples are independent)."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(11, 6, rngs=rngs)
        self.conv = nnx.Conv(6, 5, (3,), rngs=rngs)
        self.conv2 = nnx.Conv(5, 4, (2,), strides=2, padding="VALID", use_bias=False,
                              rngs=rngs)
        self.ln = nnx.LayerNorm(4, rngs=rngs)
        self.gn = nnx.GroupNorm(4, num_groups=2, rngs=rngs)
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, ids):
        h = nnx.relu(self.conv(self.embed(ids)))        # (B, T, 5)
        h = self.gn(self.ln(self.conv2(h)))             # (B, T // 2, 4)
        return self.out(nnx.relu(self.hidden(h.mean(axis=1))))


def _data(batch=6):
    ids = jax.random.randint(jax.random.key(1), (batch, 8), 0, 11)
    y = jnp.arange(batch) % 3
    return ids, y


def _loss(model, ids, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(ids), y).mean()


def _vmap_reference(model, ids, y):
    graphdef, params = nnx.split(model, nnx.Param)

    def per_example(p, i, yy):
        return _loss(nnx.merge(graphdef, p), i[None], yy[None])

    return jax.jit(lambda p, i, yy: lars_jax.per_example_norms_vmap(per_example, p, i, yy))(
        params, ids, y)


@pytest.mark.parametrize("method", ["auto", "direct"])
def test_norms_match_vmap_reference_and_grads_match_nnx_grad(method):
    model = _Mixed(nnx.Rngs(0))
    ids, y = _data()
    loss, grads, norms = nnx.jit(
        lambda m, i, yy: lars_jax.nnx_value_grad_and_norms(_loss, m, i, yy, method=method)
    )(model, ids, y)
    ref_loss, ref_grads = nnx.jit(nnx.value_and_grad(_loss))(model, ids, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-6)
    ref_norms = _vmap_reference(model, ids, y)
    assert jax.tree.structure(norms) == jax.tree.structure(ref_norms)
    assert all(n.shape == (6,) for n in jax.tree.leaves(norms))
    chex.assert_trees_all_close(norms, ref_norms, rtol=1e-5, atol=1e-7)


def test_micro_batch_norms_match_group_gradients():
    model = _Mixed(nnx.Rngs(0))
    ids, y = _data(batch=8)
    _, _, norms = nnx.jit(
        lambda m, i, yy: lars_jax.nnx_value_grad_and_norms(_loss, m, i, yy, num_groups=4)
    )(model, ids, y)
    graphdef, params = nnx.split(model, nnx.Param)
    ref = jax.jit(lambda p, i, yy: lars_jax.group_gradient_norms(
        lambda q, a, b: _loss(nnx.merge(graphdef, q), a, b), p, i, yy, num_groups=4))(
        params, ids, y)
    chex.assert_trees_all_close(norms, ref, rtol=1e-5, atol=1e-7)


class _BNNet(nnx.Module):
    def __init__(self, rngs, dropout=0.0):
        self.l1 = nnx.Linear(5, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def _bn_loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@pytest.mark.slow
def test_batchnorm_and_dropout_update_state_like_nnx_grad():
    x = jax.random.normal(jax.random.key(2), (8, 5))
    y = jnp.arange(8) % 3
    ours, theirs = _BNNet(nnx.Rngs(0), dropout=0.3), _BNNet(nnx.Rngs(0), dropout=0.3)
    loss, grads, _ = lars_jax.nnx_value_grad_and_norms(_bn_loss, ours, x, y)
    ref_loss, ref_grads = nnx.value_and_grad(_bn_loss)(theirs, x, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)  # same dropout mask
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.bn.mean[...], theirs.bn.mean[...], rtol=1e-6)
    np.testing.assert_allclose(ours.bn.var[...], theirs.bn.var[...], rtol=1e-6)
    assert not np.allclose(ours.bn.mean[...], 0.0)  # the running mean moved
    assert int(ours.drop.rngs.count[...]) == int(theirs.drop.rngs.count[...]) == 1
    # eval mode: running statistics are used and left alone
    ours.eval()
    before = np.asarray(ours.bn.mean[...])
    lars_jax.nnx_value_grad_and_norms(_bn_loss, ours, x, y)
    np.testing.assert_array_equal(ours.bn.mean[...], before)


def test_batchnorm_norms_equal_the_linen_path():
    """BatchNorm couples examples; the norms are those of the linen twin network."""
    x = jax.random.normal(jax.random.key(2), (8, 5))
    y = jnp.arange(8) % 3
    model = _BNNet(nnx.Rngs(0))
    _, _, norms = lars_jax.nnx_value_grad_and_norms(_bn_loss, model, x, y)

    class Twin(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.BatchNorm(use_running_average=False, momentum=0.9, name="bn")(
                nn.Dense(8, name="l1")(x))
            return nn.Dense(3, name="l2")(nn.relu(h))

    p = {"l1": {"kernel": model.l1.kernel[...], "bias": model.l1.bias[...]},
         "bn": {"scale": model.bn.scale[...], "bias": model.bn.bias[...]},
         "l2": {"kernel": model.l2.kernel[...], "bias": model.l2.bias[...]}}
    stats = {"bn": {"mean": jnp.zeros(8), "var": jnp.ones(8)}}

    def linen_loss(p, x, y):
        logits, _ = Twin().apply({"params": p, "batch_stats": stats}, x,
                                 mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    _, _, want = lars_jax.value_grad_and_norms(linen_loss, p, x, y)
    for name in ("l1", "bn", "l2"):
        for attr, n in want[name].items():
            np.testing.assert_allclose(norms[name][attr][...], n, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("factory", ["lars", "clars"])
def test_nnx_optimizer_step_matches_float64_reference(factory):
    model = _Mixed(nnx.Rngs(0))
    ids, y = _data()
    hp = dict(learning_rate=0.5, weight_decay=1e-3, trust_coefficient=0.02, momentum=0.9)
    tx = getattr(lars_jax, factory)(**hp)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    params_before = nnx.state(model, nnx.Param)
    params_before = jax.tree.map(lambda a: np.asarray(a, np.float64), params_before)

    @nnx.jit
    def step(model, optimizer, ids, y):
        loss, grads, norms = lars_jax.nnx_value_grad_and_norms(_loss, model, ids, y)
        extra = {"per_example_norms": norms} if factory == "clars" else {}
        optimizer.update(model, grads, **extra)
        return grads, norms

    grads, norms = step(model, optimizer, ids, y)
    want = lars_jax.testing.reference_lars_updates(
        params_before, [grads],
        per_example_norms_per_step=[norms] if factory == "clars" else None, **hp)[0]
    got = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b,
                       nnx.state(model, nnx.Param), params_before)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)


def test_clars_with_nnx_optimizer_trains():
    model = _BNNet(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (64, 5))
    y = jnp.argmax(x[:, :3], axis=1)
    optimizer = nnx.Optimizer(model, lars_jax.clars(1.0, trust_coefficient=0.02), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads, norms = lars_jax.nnx_value_grad_and_norms(_bn_loss, model, x, y)
        optimizer.update(model, grads, per_example_norms=norms)
        return loss

    first = step(model, optimizer, x, y)
    for _ in range(40):
        loss = step(model, optimizer, x, y)
    assert loss < 0.3 * first


# ----------------------------------------------------------------------- errors


def test_unsupported_parameters_are_named():
    class Custom(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 2, rngs=rngs)
            self.temperature = nnx.Param(jnp.ones(()))

        def __call__(self, x):
            return self.lin(x) * self.temperature[...]

    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="temperature"):
        lars_jax.nnx_value_grad_and_norms(lambda m, x: m(x).mean(), Custom(nnx.Rngs(0)), x)


def test_weight_tying_and_attend_raise():
    class Tied(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(7, 4, rngs=rngs)

        def __call__(self, ids):
            return self.embed(ids).mean(axis=1) @ self.embed.embedding[...].T

    class Attend(Tied):
        def __call__(self, ids):
            return self.embed.attend(self.embed(ids).mean(axis=1))

    ids = jnp.zeros((4, 3), jnp.int32)
    for cls in (Tied, Attend):
        with pytest.raises(ValueError, match="embed"):
            lars_jax.nnx_value_grad_and_norms(lambda m, i: m(i).mean(), cls(nnx.Rngs(0)), ids)


def test_layer_called_twice_and_custom_dot_general_raise():
    class Twice(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            return self.lin(self.lin(x))

    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="more than once"):
        lars_jax.nnx_value_grad_and_norms(lambda m, x: m(x).mean(), Twice(nnx.Rngs(0)), x)
    custom = nnx.Linear(3, 2, dot_general=lambda *a, **k: jax.lax.dot_general(*a, **k),
                        rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dot_general"):
        lars_jax.nnx_value_grad_and_norms(lambda m, x: m(x).mean(), custom, x)


def test_nnx_model_through_the_linen_function_points_to_the_nnx_one():
    """An NNX model handed to the linen entry point names the function that supports it.

    Catches: the bare "called no layer" message that did not say NNX needs another entry
    point (issue 16, item 1)."""
    import jax
    import jax.numpy as jnp
    import pytest
    from flax import nnx

    import lars_jax

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss_fn(p, x):
        return jnp.mean(nnx.merge(graphdef, p)(x) ** 2)

    with pytest.raises(ValueError, match="nnx_value_grad_and_norms"):
        lars_jax.value_grad_and_norms(loss_fn, params, jax.numpy.ones((4, 3)))


# ------------------------------------------ parameters read in the loss; rngs (issue 24)


class _DropMLP(nnx.Module):
    def __init__(self, rngs):
        self.linear1 = nnx.Linear(5, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.5)
        self.linear2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x, rngs=None):
        return self.linear2(self.drop(nnx.relu(self.linear1(x)), rngs=rngs))


def test_penalty_read_through_nnx_state_is_exact():
    """Catches: nnx.state(model, nnx.Param) empty inside the loss (loss 2.5 vs 4.8) and a
    bare KeyError when indexed (issue 24, item 2)."""
    model = _DropMLP(nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.arange(8) % 3

    def penalty(m):
        state = nnx.state(m, nnx.Param)
        total = sum(jnp.sum(w**2) for w in jax.tree.leaves(state))
        return 1e-2 * total + 1e-2 * jnp.sum(state["linear2"]["bias"][...] ** 2)

    def loss(m, x, y):
        ce = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        return ce + penalty(m)

    (value, grads, norms) = lars_jax.nnx_value_grad_and_norms(loss, model, x, y)
    ref_value, ref_grads = nnx.value_and_grad(loss)(model, x, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    graphdef, params = nnx.split(model, nnx.Param)
    expected = lars_jax.per_example_norms_vmap(
        lambda p, xi, yi: loss(nnx.merge(graphdef, p), xi[None], yi[None]), params, x, y)
    chex.assert_trees_all_close(norms, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("by_keyword", [False, True])
def test_rngs_passed_to_the_loss_like_the_nnx_tutorial(by_keyword):
    """Catches: TraceContextError (positional) and InvalidRngError (``rngs=``) from flax
    internals when the loss takes the dropout rngs (issue 24, item 3)."""
    model = _DropMLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.arange(8) % 3

    def loss(m, rngs, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x, rngs=rngs), y).mean()

    rngs, ref_rngs = nnx.Rngs(dropout=3), nnx.Rngs(dropout=3)
    if by_keyword:
        value, grads, _ = lars_jax.nnx_value_grad_and_norms(
            lambda m, x, y, rngs: loss(m, rngs, x, y), model, x, y, rngs=rngs)
    else:
        value, grads, _ = lars_jax.nnx_value_grad_and_norms(loss, model, rngs, x, y)
    ref_value, ref_grads = nnx.value_and_grad(loss)(model, ref_rngs, x, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)  # the same dropout mask
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    assert int(rngs.dropout.count[...]) == int(ref_rngs.dropout.count[...]) == 1
