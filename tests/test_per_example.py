"""Tests for lars_jax.per_example: fast per-example gradient norms against vmap(grad)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _xla_env import XLA_DEFAULTS

from lars_jax.per_example import (
    group_gradient_norms,
    per_example_norms_vmap,
    value_grad_and_norms,
)

# ---------------------------------------------------------------------------------------
# Small models.


class MLP(nn.Module):
    """Dense layers, one applied to a 3-D input (positions), with and without bias."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6)(x))  # (B, 3, 4) -> (B, 3, 6): Dense on >2-D inputs
        x = nn.tanh(nn.Dense(5, use_bias=False)(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


class ConvStack(nn.Module):
    """Strides 1 and 2, SAME, VALID and explicit padding, 1x1 and 3x3 kernels, biases."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=1, padding="SAME")(x))
        x = nn.relu(nn.Conv(5, (3, 3), strides=2, padding="SAME", use_bias=False)(x))
        x = nn.relu(nn.Conv(6, (1, 1), strides=1, padding="VALID")(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="VALID")(x))
        x = nn.relu(nn.Conv(4, (2, 3), strides=(1, 2), padding=((1, 0), (1, 1)))(x))
        x = nn.relu(nn.Conv(3, (1, 1), strides=2, padding="SAME")(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


class Block(nn.Module):
    """A ResNet basic block (two 3x3 convs, projection shortcut on stride 2)."""

    features: int
    strides: int
    norm: str

    def _norm(self, x):
        if self.norm == "group":
            return nn.GroupNorm(num_groups=2)(x)
        if self.norm == "batch":
            return nn.BatchNorm(use_running_average=False, momentum=0.9)(x)
        return x

    @nn.compact
    def __call__(self, x):
        use_bias = self.norm == "none"
        y = nn.Conv(self.features, (3, 3), self.strides, padding="SAME", use_bias=use_bias)(x)
        y = nn.relu(self._norm(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=use_bias)(y)
        y = self._norm(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = nn.Conv(self.features, (1, 1), self.strides, use_bias=use_bias)(x)
            x = self._norm(x)
        return nn.relu(x + y)


class TinyResNet(nn.Module):
    """ResNet-shaped: stem, 3 stages of basic blocks (strides 1, 2, 2), dense head."""

    norm: str = "none"
    widths: tuple[int, ...] = (4, 6, 8)
    blocks: int = 3  # per stage: 3 is ResNet-20's shape, 1 ResNet-8's

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=self.norm == "none")(x)
        if self.norm == "group":
            x = nn.GroupNorm(num_groups=2)(x)
        elif self.norm == "batch":
            x = nn.BatchNorm(use_running_average=False, momentum=0.9)(x)
        x = nn.relu(x)
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = Block(width, strides, self.norm)(x)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


# ---------------------------------------------------------------------------------------
# Helpers.


def _init(model, seed, x):
    """``model.init`` compiled as one program, with an "rbg" key: run eagerly with the
    default threefry key, XLA:CPU compiles every initialiser on its own (~10 s for
    ResNet-8)."""
    return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), x)


def _batch(shape, b, seed=0):
    kx, _ = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (b, *shape))
    y = jnp.arange(b) % 3
    return x, y


def _loss_fn(model):
    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def _per_example_loss_fn(model):
    loss_fn = _loss_fn(model)
    return lambda params, x, y: loss_fn(params, x[None], y[None])


def _assert_tree_close(actual, expected, rtol=1e-4, atol=1e-6):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    ):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (jax.tree_util.keystr(path), a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def _check_against_vmap(model, in_shape, b, methods=("auto",), seed=0):
    """One jitted program computes the references and value_grad_and_norms per method."""
    x, y = _batch(in_shape, b, seed)
    params = _init(model, seed + 1, x)["params"]
    loss_fn = _loss_fn(model)

    @jax.jit
    def run(p, x, y):
        expected = per_example_norms_vmap(_per_example_loss_fn(model), p, x, y)
        reference = jax.value_and_grad(loss_fn)(p, x, y)
        ours = [value_grad_and_norms(loss_fn, p, x, y, method=m) for m in methods]
        return expected, reference, ours

    expected, (loss_ref, grads_ref), ours = run(params, x, y)
    for loss, grads, norms in ours:
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
        _assert_tree_close(grads, grads_ref, rtol=1e-4, atol=1e-6)
        _assert_tree_close(norms, expected)
        for leaf in jax.tree.leaves(norms):
            assert leaf.shape == (b,) and leaf.dtype == jnp.float32


# ---------------------------------------------------------------------------------------
# Equality with vmap(grad).


@pytest.mark.parametrize(
    ("b", "methods"), [(1, ("auto",)), (7, ("ghost", "direct")), (64, ("auto",))]
)
def test_dense_matches_vmap(b, methods):
    _check_against_vmap(MLP(), (3, 4), b, methods=methods)


def test_conv_matches_vmap():
    _check_against_vmap(ConvStack(), (9, 10, 2), 7, methods=("auto", "ghost", "direct"))


def test_resnet_shaped_without_norm_matches_vmap():
    # ResNet-8's shape: identity and projection shortcuts, biases, strides; the norms are
    # per layer, so ResNet-20's depth adds compile time and no case
    _check_against_vmap(TinyResNet(norm="none", blocks=1), (8, 8, 3), 7)


def test_project_resnet_with_groupnorm_matches_vmap():
    from lars_jax.models import create_model

    # resnet8 has every layer kind of resnet20 (same builder, 1 block per stage, not 3)
    model = create_model("resnet8", num_classes=3, norm="group", width=0.25, group_norm_groups=2)
    _check_against_vmap(model, (8, 8, 3), 7)


def test_layernorm_and_tiny_batch64_matches_vmap():
    model = nn.Sequential(
        [
            nn.Conv(3, (3, 3), strides=2),
            nn.LayerNorm(),
            nn.relu,
            lambda x: x.reshape(x.shape[0], -1),
            nn.Dense(3),
        ]
    )
    _check_against_vmap(model, (5, 5, 2), 64)


class GroupedConvNet(nn.Module):
    """Grouped (2 groups), depthwise (x2 multiplier, strided) and dilated convolutions."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
        x = nn.relu(nn.Conv(6, (3, 3), feature_group_count=2, padding="SAME")(x))
        x = nn.relu(nn.Conv(12, (3, 3), strides=2, feature_group_count=6, padding="VALID")(x))
        x = nn.relu(nn.Conv(4, (2, 2), kernel_dilation=2, feature_group_count=4)(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_grouped_and_depthwise_conv_match_vmap():
    _check_against_vmap(GroupedConvNet(), (9, 9, 2), 5, methods=("auto", "ghost", "direct"))


def test_direct_conv_as_one_grouped_convolution_matches_vmap(monkeypatch):
    """The "grouped" way of forming per-example conv kernel gradients (one convolution with
    the batch as feature groups): strides, SAME/VALID/asymmetric padding, feature groups,
    dilation, and groups of examples (num_groups)."""
    from lars_jax import per_example

    monkeypatch.setattr(per_example, "_CONV_DIRECT", "grouped")
    _check_against_vmap(GroupedConvNet(), (9, 9, 2), 5, methods=("direct",))
    # ConvStack per example and in 2 groups of 3 examples, in one program
    model = ConvStack()
    x, y = _batch((9, 10, 2), 6)
    params = _init(model, 1, x)["params"]
    loss_fn = _loss_fn(model)

    @jax.jit
    def run(p, x, y):
        return (value_grad_and_norms(loss_fn, p, x, y, method="direct"),
                per_example_norms_vmap(_per_example_loss_fn(model), p, x, y),
                value_grad_and_norms(loss_fn, p, x, y, num_groups=2, method="direct"),
                group_gradient_norms(loss_fn, p, x, y, num_groups=2),
                jax.value_and_grad(loss_fn)(p, x, y))

    (loss, grads, norms), expected, (_, grads2, norms2), expected2, (loss_ref, grads_ref) = run(
        params, x, y)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    _assert_tree_close(grads, grads_ref)
    _assert_tree_close(norms, expected)
    assert {leaf.shape for leaf in jax.tree.leaves(norms)} == {(6,)}
    _assert_tree_close(grads2, grads_ref)
    _assert_tree_close(norms2, expected2)


class EmbedNet(nn.Module):
    """Token ids (B, T) -> Embed -> LayerNorm -> Dense per position -> mean -> Dense."""

    @nn.compact
    def __call__(self, ids):
        h = nn.LayerNorm()(nn.Embed(7, 6)(ids))
        h = nn.tanh(nn.Dense(5)(h))
        return nn.Dense(3)(h.mean(axis=1))


def test_embed_matches_vmap_with_repeated_tokens():
    b, t = 5, 4
    ids = jax.random.randint(jax.random.key(3), (b, t), 0, 7)  # repeats within examples
    ids = ids.at[0].set(2)  # one example with the same token at every position
    y = jnp.arange(b) % 3
    model = EmbedNet()
    params = _init(model, 1, ids)["params"]
    loss_fn = _loss_fn(model)

    @jax.jit
    def run(p, ids, y):
        expected = per_example_norms_vmap(_per_example_loss_fn(model), p, ids, y)
        reference = jax.value_and_grad(loss_fn)(p, ids, y)
        return expected, reference, value_grad_and_norms(loss_fn, p, ids, y)

    expected, (loss_ref, grads_ref), (loss, grads, norms) = run(params, ids, y)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    _assert_tree_close(grads, grads_ref)
    _assert_tree_close(norms, expected)


class RematResNet(nn.Module):
    """Stem and two basic blocks, the second under ``nn.remat`` (``jax.checkpoint``)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.GroupNorm(num_groups=2)(nn.Conv(4, (3, 3), use_bias=False)(x)))
        x = Block(4, 1, "group")(x)
        x = nn.remat(Block)(6, 2, "group")(x)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_checkpointed_block_matches_vmap():
    _check_against_vmap(RematResNet(), (8, 8, 2), 3)


def test_inside_lax_scan_gradient_accumulation():
    """Two micro-batches under lax.scan (as the trainer accumulates): norms per example."""
    model = GNStack()
    x, y = _batch((6, 6, 2), 6)
    params = _init(model, 1, x)["params"]
    loss_fn = _loss_fn(model)

    @jax.jit
    def run(p, x, y):
        def body(gsum, xy):
            _, g, norms = value_grad_and_norms(loss_fn, p, *xy)
            return jax.tree.map(jnp.add, gsum, g), norms

        split = (x.reshape(2, 3, *x.shape[1:]), y.reshape(2, 3))
        gsum, norms = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, p), split)
        expected = per_example_norms_vmap(_per_example_loss_fn(model), p, x, y)
        return (
            jax.tree.map(lambda v: v.reshape(-1), norms),
            expected,
            gsum,
            jax.grad(loss_fn)(p, x, y),
        )

    norms, expected, gsum, grads = run(params, x, y)
    _assert_tree_close(norms, expected)
    _assert_tree_close(jax.tree.map(lambda g: g / 2, gsum), grads)


class MemoryNet(nn.Module):
    """A small CIFAR-shaped ResNet (BatchNorm) for the compiled-memory test."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=False)(x))
        for width, strides in ((8, 1), (16, 2), (32, 2)):
            x = Block(width, strides, "batch")(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


@pytest.mark.slow
def test_compiled_memory_is_that_of_a_plain_step():
    """XLA's memory analysis (deterministic): ours <= 1.15x value_and_grad, < vmap(grad).

    Compiled with XLA's default settings (`XLA_DEFAULTS`), what users get, not the tests'
    quick ones."""
    model = MemoryNet()
    x, y = _batch((16, 16, 3), 32)
    variables = _init(model, 1, x)
    params, stats = variables["params"], variables["batch_stats"]

    def loss_fn(p, x, y):
        logits, _ = model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def per_example_loss(p, xi, yi):
        return loss_fn(p, xi[None], yi[None])

    def vmap_path(p, x, y):
        return jax.value_and_grad(loss_fn)(p, x, y), per_example_norms_vmap(
            per_example_loss, p, x, y
        )

    def mib(fn):
        m = jax.jit(fn).lower(params, x, y).compile(compiler_options=XLA_DEFAULTS).memory_analysis()
        if m is None:
            pytest.skip("this backend gives no memory analysis")
        return (m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20

    plain = mib(jax.value_and_grad(loss_fn))
    ours = mib(lambda p, x, y: value_grad_and_norms(loss_fn, p, x, y))
    vmap = mib(vmap_path)
    assert ours <= 1.15 * plain, (ours, plain)
    assert ours < vmap, (ours, vmap)


# ---------------------------------------------------------------------------------------
# Micro-batch mode and BatchNorm.


class GNStack(nn.Module):
    """Conv, GroupNorm, strided conv, Dense: small, with per-example normalisation."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.GroupNorm(num_groups=2)(nn.Conv(4, (3, 3))(x)))
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, use_bias=False)(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


@pytest.mark.slow
def test_groups_match_explicit_group_gradients():
    model = GNStack()
    x, y = _batch((6, 6, 2), 8)
    params = _init(model, 1, x)["params"]
    loss_fn = _loss_fn(model)
    # one group (the batch gradient), groups of several examples (a wrong split of the
    # batch into groups shows at 2 groups as at 4), one example per group
    all_groups = (1, 2, 8)

    @jax.jit
    def run(p, x, y):
        ours = [value_grad_and_norms(loss_fn, p, x, y, num_groups=k) for k in all_groups]
        ref = [group_gradient_norms(loss_fn, p, x, y, num_groups=k) for k in all_groups]
        per_example = value_grad_and_norms(loss_fn, p, x, y)[2]
        return ours, ref, per_example

    ours, ref, per_example = run(params, x, y)
    for k, (_, grads, norms), expected in zip(all_groups, ours, ref, strict=True):
        for leaf in jax.tree.leaves(norms):
            assert leaf.shape == (k,)
        _assert_tree_close(norms, expected)
        if k == 1:
            _assert_tree_close(
                norms, jax.tree.map(lambda g: jnp.linalg.norm(g.ravel())[None], grads)
            )
    _assert_tree_close(ours[-1][2], per_example, rtol=1e-6)


def test_batchnorm_contributions_sum_to_batch_gradient():
    """The project's ResNet-8 with ghost BatchNorm (a BatchNorm subclass): one group: ||g||."""
    from lars_jax.models import create_model

    model = create_model("resnet8", num_classes=3, norm="batch", width=0.25, bn_ghost_size=2)
    x, y = _batch((8, 8, 3), 6)
    variables = _init(model, 1, x)
    params = variables["params"]

    def loss_fn(params, x, y):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    @jax.jit
    def run(p, x, y):
        ours = value_grad_and_norms(loss_fn, p, x, y, has_aux=True, num_groups=1)
        return ours, jax.value_and_grad(loss_fn, has_aux=True)(p, x, y)

    ((loss, updates), grads, norms), ((loss_ref, updates_ref), grads_ref) = run(params, x, y)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    _assert_tree_close(updates, updates_ref, rtol=1e-5)
    _assert_tree_close(grads, grads_ref, rtol=1e-4, atol=1e-6)
    # The per-example contributions sum to B * g, so one group of all B gives ||g||.
    _assert_tree_close(norms, jax.tree.map(lambda g: jnp.linalg.norm(g.ravel())[None], grads))


class BNNet(nn.Module):
    """Conv -> BatchNorm -> Dense, split in two methods to get the conv output cotangent."""

    def setup(self):
        self.conv = nn.Conv(4, (3, 3), strides=2)
        self.bn = nn.BatchNorm(use_running_average=False)
        self.head = nn.Dense(3)

    def stem(self, x):
        return self.conv(x)

    def rest(self, z):
        return self.head(nn.relu(self.bn(z)).mean(axis=(1, 2)))

    def __call__(self, x):
        return self.rest(self.stem(x))


def test_batchnorm_per_example_contributions_are_exact():
    """Conv kernel norms are those of B * (example i's input x cotangent), BN terms included."""
    model = BNNet()
    x, y = _batch((7, 7, 2), 6)
    b = x.shape[0]
    variables = _init(model, 1, x)
    params, stats = variables["params"], variables["batch_stats"]

    def loss_fn(p, x, y):
        logits, _ = model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def loss_of_z(z):
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, z, method="rest", mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def contribution(xi, di):
        def conv(kernel):
            p = {**params, "conv": {**params["conv"], "kernel": kernel}}
            return model.apply({"params": p}, xi[None], method="stem")

        _, vjp = jax.vjp(conv, params["conv"]["kernel"])
        return vjp(b * di[None])[0]

    @jax.jit  # one program: run eagerly, XLA:CPU compiles every primitive on its own
    def run(p, x, y):
        _, grads, norms = value_grad_and_norms(loss_fn, p, x, y)
        z = model.apply({"params": p}, x, method="stem")
        cot = jax.grad(loss_of_z)(z)  # includes BatchNorm's cross-example terms
        vmap_norms = per_example_norms_vmap(
            lambda p, xi, yi: loss_fn(p, xi[None], yi[None]), p, x, y)
        return grads, norms, jax.vmap(contribution)(x, cot), vmap_norms

    grads, norms, contrib, vmap_norms = run(params, x, y)
    np.testing.assert_allclose(contrib.sum(0) / b, grads["conv"]["kernel"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        norms["conv"]["kernel"], jnp.linalg.norm(contrib.reshape(b, -1), axis=1), rtol=1e-4
    )
    # vmap(grad) (BatchNorm over one example) is a different quantity.
    assert not np.allclose(norms["conv"]["kernel"], vmap_norms["conv"]["kernel"], rtol=1e-2)


# ---------------------------------------------------------------------------------------
# Data parallel: inside shard_map over the 8 simulated devices.


def test_inside_shard_map_gives_per_device_norms():
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 devices (conftest sets XLA_FLAGS)")
    mesh = Mesh(np.array(devices[:8]), ("data",))
    # GNStack, not ConvStack: what is checked here is where the norms are taken (per
    # device, per example), not the layer kinds (test_conv_matches_vmap has ConvStack's)
    model = GNStack()
    x, y = _batch((6, 6, 2), 16)
    params = _init(model, 1, x)["params"]
    loss_fn = _loss_fn(model)

    def step(p, x, y):
        loss, grads, norms = value_grad_and_norms(loss_fn, p, x, y)
        _, _, local = value_grad_and_norms(loss_fn, p, x, y, num_groups=1)
        # Whatever JAX does with the gradient of replicated params inside shard_map, the
        # gradient returned must be the one jax.value_and_grad gives in the same place.
        loss_ref, grads_ref = jax.value_and_grad(loss_fn)(p, x, y)
        return loss[None], loss_ref[None], grads, grads_ref, norms, local

    sharded = jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=(P("data"), P("data"), P(), P(), P("data"), P("data")),
        )
    )
    loss, loss_ref, grads, grads_ref, norms, local = sharded(params, x, y)
    assert loss.shape == (8,)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    _assert_tree_close(grads, grads_ref, atol=1e-6)
    expected, expected_local = jax.jit(
        lambda p, x, y: (
            per_example_norms_vmap(_per_example_loss_fn(model), p, x, y),
            group_gradient_norms(loss_fn, p, x, y, num_groups=8),
        )
    )(params, x, y)
    _assert_tree_close(norms, expected)
    _assert_tree_close(local, expected_local)


def test_inside_pmap_gives_per_device_norms():
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices (conftest sets XLA_FLAGS)")
    model = GNStack()
    x, y = _batch((6, 6, 2), 6)
    params = _init(model, 1, x)["params"]
    loss_fn = _loss_fn(model)

    def step(p, x, y):
        loss, grads, norms = value_grad_and_norms(loss_fn, p, x, y)
        return jax.lax.pmean(grads, "d"), norms

    grads, norms = jax.pmap(step, axis_name="d", in_axes=(None, 0, 0))(
        params, x.reshape(2, 3, *x.shape[1:]), y.reshape(2, 3)
    )
    expected, grads_ref = jax.jit(
        lambda p, x, y: (
            per_example_norms_vmap(_per_example_loss_fn(model), p, x, y),
            jax.grad(loss_fn)(p, x, y),
        )
    )(params, x, y)
    _assert_tree_close(jax.tree.map(lambda v: v.reshape(-1), norms), expected)
    _assert_tree_close(jax.tree.map(lambda g: g[0], grads), grads_ref)


# ---------------------------------------------------------------------------------------
# Errors.


class WithDenseGeneral(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.DenseGeneral((2, 2))(x)
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


class WithRawParam(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.ones, (x.shape[-1],))
        return nn.Dense(3)(x * w)


class TiedEmbed(nn.Module):
    """Embedding weights reused as the output layer through ``Embed.attend``."""

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(5, 4)
        return embed.attend(embed(ids).mean(axis=1))


def test_unrecognised_layers_raise_naming_the_module():
    x = jnp.ones((4, 3))
    model = WithDenseGeneral()
    params = _init(model, 0, x)["params"]
    loss = lambda p, x: model.apply({"params": p}, x).sum()
    with pytest.raises(ValueError, match="DenseGeneral_0/kernel"):
        value_grad_and_norms(loss, params, x)
    model = WithRawParam()
    params = _init(model, 0, x)["params"]
    loss = lambda p, x: model.apply({"params": p}, x).sum()
    with pytest.raises(ValueError, match="'w'"):
        value_grad_and_norms(loss, params, x)


def test_embed_attend_raises_naming_the_method():
    ids = jnp.arange(12).reshape(4, 3) % 5
    model = TiedEmbed()
    params = _init(model, 0, ids)["params"]
    loss = lambda p, ids: model.apply({"params": p}, ids).sum()
    with pytest.raises(ValueError, match="Embed_0.*'attend'"):
        value_grad_and_norms(loss, params, ids)


def test_mask_argument_raises_naming_the_layer():
    class Masked(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.LayerNorm()(x, mask=x > 0))

    x = jnp.arange(12.0).reshape(4, 3)
    model = Masked()
    params = _init(model, 0, x)["params"]
    with pytest.raises(ValueError, match="LayerNorm at LayerNorm_0.*mask"):
        value_grad_and_norms(lambda p, x: model.apply({"params": p}, x).sum(), params, x)


def test_shared_module_raises():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            d = nn.Dense(3)
            return d(d(x))

    x = jnp.ones((4, 3))
    model = Shared()
    params = _init(model, 0, x)["params"]
    with pytest.raises(ValueError, match="more than once"):
        value_grad_and_norms(lambda p, x: model.apply({"params": p}, x).sum(), params, x)


def test_bad_arguments_raise():
    model = nn.Dense(2)
    x = jnp.ones((6, 3))
    params = _init(model, 0, x)["params"]
    loss = lambda p, x: model.apply({"params": p}, x).sum()
    with pytest.raises(ValueError, match="num_groups"):
        value_grad_and_norms(loss, params, x, num_groups=4)
    with pytest.raises(ValueError, match="method"):
        value_grad_and_norms(loss, params, x, method="fast")


# ---------------------------------------------------------------------------------------
# Loss terms that read parameters outside the layer calls (issue 24, item 1), the loss
# reduction (issue 25, item 8) and complex parameters.


class EmbedConvNet(nn.Module):
    """Embed, Conv, LayerNorm and Dense: every tap kind a penalty's term must reach."""

    @nn.compact
    def __call__(self, ids):
        h = nn.relu(nn.Conv(5, (3,))(nn.Embed(9, 4)(ids)))
        h = nn.LayerNorm()(h)
        return nn.Dense(3)(h.mean(axis=1))


def _penalised(model, weight, reduce=jnp.mean, kernels_only=False):
    def penalty(p):
        leaves = jax.tree.leaves(p)
        return weight * sum(jnp.sum(w**2) for w in leaves if w.ndim > 1 or not kernels_only)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return reduce(optax.softmax_cross_entropy_with_integer_labels(logits, y)) + penalty(p)

    def per_example(p, x, y):  # the example's own loss: its CE plus its share of the penalty
        share = 1.0 if reduce is jnp.mean else 1.0 / y_size[0]
        logits = model.apply({"params": p}, x[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0] + (
            share * penalty(p))

    y_size = [0]
    return loss_fn, per_example, y_size


def _shifted(params):
    """Non-zero biases, so that a penalty on them has a gradient too."""
    return jax.tree.map(lambda w: w + 0.1 if w.ndim == 1 else w, params)


@pytest.mark.parametrize("method", ["ghost", "direct"])
def test_l2_penalty_in_the_loss_is_in_the_norms(method):
    """Catches: the penalty's gradient left out of the norms (6.4e-3 relative, issue 24)."""
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
    x, y = _batch((5,), 8)
    params = _shifted(_init(model, 1, x)["params"])
    loss_fn, per_example, size = _penalised(model, 1e-2)
    size[0] = 8

    @jax.jit
    def run(p, x, y):
        return (value_grad_and_norms(loss_fn, p, x, y, method=method),
                jax.value_and_grad(loss_fn)(p, x, y),
                per_example_norms_vmap(per_example, p, x, y))

    (loss, grads, norms), (loss_ref, grads_ref), expected = run(params, x, y)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    _assert_tree_close(grads, grads_ref)
    _assert_tree_close(norms, expected, rtol=1e-4)


def test_penalty_reaches_conv_embed_and_layernorm_taps_and_groups():
    model = EmbedConvNet()
    ids = jax.random.randint(jax.random.key(0), (8, 6), 0, 9)
    y = jnp.arange(8) % 3
    params = _shifted(_init(model, 1, ids)["params"])
    loss_fn, per_example, size = _penalised(model, 3e-2)
    size[0] = 8

    @jax.jit
    def run(p, ids, y):
        return (value_grad_and_norms(loss_fn, p, ids, y)[2],
                per_example_norms_vmap(per_example, p, ids, y),
                value_grad_and_norms(loss_fn, p, ids, y, num_groups=2)[2],
                group_gradient_norms(loss_fn, p, ids, y, num_groups=2))

    norms, expected, groups, expected_groups = run(params, ids, y)
    _assert_tree_close(norms, expected)
    # Groups: each group's mean-loss gradient contains the whole penalty gradient.
    _assert_tree_close(groups, expected_groups)


def test_sum_loss_reduction():
    """Catches: a sum loss silently giving norms B times the reference (issue 25, item 8)."""
    model = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(3)])
    x, y = _batch((4,), 8)
    params = _shifted(_init(model, 1, x)["params"])
    loss_fn, per_example, size = _penalised(model, 1e-2, reduce=jnp.sum)
    size[0] = 8
    mean_loss, _, _ = _penalised(model, 1e-2 / 8)  # each group's mean loss: its 1/4 share

    @jax.jit
    def run(p, x, y):
        return (value_grad_and_norms(loss_fn, p, x, y, loss_reduction="sum"),
                jax.value_and_grad(loss_fn)(p, x, y),
                per_example_norms_vmap(per_example, p, x, y),
                value_grad_and_norms(loss_fn, p, x, y, num_groups=4, loss_reduction="sum")[2],
                group_gradient_norms(mean_loss, p, x, y, num_groups=4))

    (loss, grads, norms), (loss_ref, grads_ref), expected, groups, expected_groups = run(
        params, x, y)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    _assert_tree_close(grads, grads_ref)
    _assert_tree_close(norms, expected)
    _assert_tree_close(groups, expected_groups)
    with pytest.raises(ValueError, match="loss_reduction"):
        value_grad_and_norms(loss_fn, params, x, y, loss_reduction="total")


def test_parameter_read_in_a_batch_dependent_term_raises_naming_it():
    model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3)])
    x, y = _batch((5,), 4)
    params = _init(model, 1, x)["params"]

    def tied(p, x, y):  # the first kernel also scores the input: depends on the batch
        logits = model.apply({"params": p}, x)
        extra = jnp.mean((x @ p["layers_0"]["kernel"]) ** 2)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + extra

    with pytest.raises(ValueError, match="layers_0/kernel.*depends on the batch"):
        value_grad_and_norms(tied, params, x, y)

    def scaled(p, x, y):  # penalised and passed to the layers transformed
        logits = model.apply({"params": jax.tree.map(lambda w: 2.0 * w, p)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + sum(
            jnp.sum(w**2) for w in jax.tree.leaves(p))

    with pytest.raises(ValueError, match="layers_0/(kernel|bias) is read.*transformed"):
        value_grad_and_norms(scaled, params, x, y)


def test_complex_parameters_are_refused_naming_them():
    model = nn.Dense(3, param_dtype=jnp.complex64)
    x = jnp.ones((4, 5))
    params = _init(model, 0, x)["params"]

    def loss_fn(p, x):
        return jnp.mean(jnp.abs(model.apply({"params": p}, x)) ** 2)

    with pytest.raises(ValueError, match="parameter (kernel|bias) is complex"):
        value_grad_and_norms(loss_fn, params, x)
