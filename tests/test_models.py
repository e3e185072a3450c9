"""Tests of lars_jax.models: shapes, normalization variants, dtypes, MAC counts."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from lars_jax import models
from lars_jax.models import count_fn_macs, count_macs, create_model


def _key(seed=0):
    # "rbg" keys: the default threefry keys make XLA:CPU compile the initialisers very slowly.
    return jax.random.key(seed, impl="rbg")


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _init(model, shape, key=0):
    return model.init(_key(key), jnp.zeros(shape, jnp.float32), train=False)


def _jit_init(model, shape, key=0):
    """`_init` compiled as one program (eagerly, XLA:CPU compiles every initialiser and
    every primitive on its own: seconds for a ResNet-8)."""
    return jax.jit(lambda: _init(model, shape, key))()


def _num_params(name, input_shape=(32, 32, 3), num_classes=10, **kw):
    model = create_model(name, num_classes=num_classes, **kw)
    v = jax.eval_shape(lambda: _init(model, (1,) + input_shape))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_traces_to_float32_logits_for_fashion_mnist_shapes(name):
    model = create_model(name, num_classes=7)
    x = jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32)
    v = jax.eval_shape(lambda: _init(model, x.shape))
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), v, x)
    logits, updates = out
    assert logits.shape == (4, 7) and logits.dtype == jnp.float32
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(v["batch_stats"])


def test_small_model_trains_and_evaluates():
    """A few plain gradient steps on one batch lower the training loss, every parameter
    tensor gets a non-zero gradient, and evaluation uses the running statistics.

    Catches: a model whose output does not depend on some of its parameters (a dead
    block, a stop_gradient, a kernel created outside "params"), a loss that gradient
    descent cannot lower (e.g. logits detached from the features), and BN running
    statistics that training does not update or evaluation does not read."""
    import optax

    model = create_model("resnet8", num_classes=7, width=0.25)
    x = _normal(1, (8, 12, 12, 1))
    y = jnp.arange(8) % 7
    variables = jax.jit(lambda x: _init(model, x.shape))(x)

    def loss_fn(params, stats):
        logits, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, upd["batch_stats"])

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    params, stats = variables["params"], variables["batch_stats"]
    (loss0, (logits, new_stats)), grads = step(params, stats)
    assert logits.shape == (8, 7) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.max(np.abs(np.asarray(g))) > 0, f"no gradient reaches {path}"
    losses = [float(loss0)]
    sgd = jax.jit(lambda params, grads: jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
    for _ in range(5):
        params = sgd(params, grads)
        (loss, (_, stats)), grads = step(params, stats)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses
    # Training mode changed the running statistics; evaluation mode uses them.
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(new_stats)
    assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    ev = jax.jit(lambda s: model.apply({"params": params, "batch_stats": s}, x, train=False))
    assert float(jnp.max(jnp.abs(ev(stats) - ev(variables["batch_stats"])))) > 1e-3


@pytest.mark.parametrize(
    "name,input_shape,num_classes,published,tol",
    [
        # He et al. 2016 sec. 4.2: 0.27M / 0.85M parameters; ResNet-50: 25.6M; ResNet-18
        # (CIFAR stem): 11.17M.
        ("resnet20", (32, 32, 3), 10, 0.27e6, 0.01),
        ("resnet56", (32, 32, 3), 10, 0.85e6, 0.01),
        ("resnet18", (32, 32, 3), 10, 11.17e6, 0.01),
        ("resnet50", (224, 224, 3), 1000, 25.56e6, 0.01),
    ],
)
def test_parameter_counts_match_published(name, input_shape, num_classes, published, tol):
    n = _num_params(name, input_shape, num_classes)
    assert abs(n - published) / published < tol, n


@pytest.mark.parametrize(
    "name,input_shape,num_classes,published",
    [
        ("resnet20", (32, 32, 3), 10, 41e6),
        ("resnet18", (32, 32, 3), 10, 556e6),
        ("resnet50", (224, 224, 3), 1000, 4.1e9),
    ],
)
def test_count_macs_matches_published_counts(name, input_shape, num_classes, published):
    macs = count_macs(name, input_shape, num_classes)
    assert abs(macs - published) / published < 0.03, macs
    assert models.flops_per_example(name, input_shape, num_classes) == 2 * macs


def test_count_fn_macs_is_exact_for_one_conv_and_one_dense():
    conv = nn.Conv(5, (3, 3), strides=(2, 2), padding="SAME")
    dense = nn.Dense(4)
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)  # MACs need shapes only
    pc = jax.eval_shape(conv.init, _key(), x)
    y = jax.eval_shape(conv.apply, pc, x)  # (2, 4, 4, 5)
    pd = jax.eval_shape(dense.init, _key(), jax.ShapeDtypeStruct((2, 80), jnp.float32))
    assert y.shape == (2, 4, 4, 5)
    macs = count_fn_macs(lambda a, b, x: dense.apply(b, conv.apply(a, x).reshape(2, -1)), pc, pd, x)
    assert macs == 2 * 4 * 4 * 5 * (3 * 3 * 3) + 2 * (4 * 4 * 5) * 4


def test_macs_scale_with_image_area_and_width():
    base = count_macs("resnet8", (32, 32, 3))
    # All convolutions scale with the area; only the tiny dense layer does not.
    assert abs(count_macs("resnet8", (64, 64, 3)) / base - 4) < 0.01
    half = count_macs("resnet8", (32, 32, 3), width=0.5)
    assert 0.24 < half / base < 0.30  # interior convs x1/4, the stem conv x1/2


class _ConvNorm(nn.Module):
    """A conv followed by one norm layer from `make_norm` (cheap to compile)."""

    ghost: int | None = None
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train=True):
        x = nn.Conv(3, (3, 3))(x)
        norm = models.make_norm(
            "batch", train=train, ghost_size=self.ghost, axis_name=self.axis_name
        )
        return norm(3)(x)


@functools.partial(jax.jit, static_argnums=0)  # one program per module and shape
def _apply(m, v, x):
    return m.apply(v, x, train=True, mutable=["batch_stats"])


def _to_ghost(v):
    """Variables of _ConvNorm() renamed for _ConvNorm(ghost=...)."""
    new = {"BatchNorm_0": "GhostBatchNorm_0", "Conv_0": "Conv_0"}
    return {c: {new[k]: w for k, w in d.items()} for c, d in v.items()}


def test_ghost_batch_norm_equals_batch_norm_on_each_chunk():
    x = _normal(3, (8, 5, 5, 2)) * 3 + 1
    ghost, plain = _ConvNorm(ghost=4), _ConvNorm()
    v = jax.jit(plain.init)(_key(), x)
    vg = jax.eval_shape(ghost.init, _key(), x)
    # Same variables, only the layer name differs.
    assert jax.tree.map(jnp.shape, _to_ghost(v)) == jax.tree.map(jnp.shape, vg)
    vg = _to_ghost(v)
    out, upd = _apply(ghost, vg, x)
    chunks = [_apply(plain, v, x[i : i + 4]) for i in (0, 4)]
    ref = np.concatenate([c[0] for c in chunks])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(out) - np.asarray(_apply(plain, v, x)[0])).max() > 1e-2
    # Running statistics: the mean over ghosts of the ghost statistics.
    for name in ("mean", "var"):
        g = upd["batch_stats"]["GhostBatchNorm_0"][name]
        c = [ch[1]["batch_stats"]["BatchNorm_0"][name] for ch in chunks]
        np.testing.assert_allclose(g, (c[0] + c[1]) / 2, rtol=1e-4, atol=1e-5)
    # A ghost as large as the batch is plain BatchNorm; evaluation is plain BatchNorm.
    full = _ConvNorm(ghost=8)
    np.testing.assert_allclose(_apply(full, vg, x)[0], _apply(plain, v, x)[0], rtol=1e-5, atol=1e-5)
    evaluate = jax.jit(lambda m, v: m.apply(v, x, train=False), static_argnums=0)
    np.testing.assert_allclose(evaluate(ghost, vg), evaluate(plain, v), rtol=1e-6)
    with pytest.raises(ValueError, match="bn_ghost_size"):
        jax.eval_shape(lambda: ghost.apply(vg, x[:6], train=True, mutable=["batch_stats"]))
    # create_model wires the ghost layer in.
    m = create_model("resnet8", num_classes=3, bn_ghost_size=2)
    shapes = jax.eval_shape(lambda: _init(m, (2, 8, 8, 1)))
    assert "GhostBatchNorm_0" in shapes["params"]


@pytest.mark.parametrize("ghost", [None, 2])
def test_bn_axis_name_gives_cross_device_statistics(ghost):
    devices = np.array(jax.devices()[:2])
    if len(devices) < 2:
        pytest.skip("needs 2 devices (conftest sets 8 simulated CPU devices)")
    mesh = Mesh(devices, ("data",))
    x = _normal(4, (8, 5, 5, 1)) * 2 + 0.5
    sharded, local = _ConvNorm(ghost=ghost, axis_name="data"), _ConvNorm()
    v = jax.jit(local.init)(_key(), x)
    vs = v if ghost is None else _to_ghost(v)
    assert jax.tree.structure(vs) == jax.tree.structure(jax.eval_shape(sharded.init, _key(), x))

    @jax.jit
    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec("data")),
        out_specs=(PartitionSpec("data"), PartitionSpec()),
    )
    def fwd(v, x):
        return sharded.apply(v, x, train=True, mutable=["batch_stats"])

    out, upd = fwd(vs, x)
    if ghost is None:
        # Averaging statistics over the 2 devices = statistics of the whole batch.
        ref, ref_upd = _apply(local, v, x)
    else:
        # Ghost k of each device (examples 2k, 2k+1 of each half) forms one group of 4.
        perm = np.array([0, 1, 4, 5, 2, 3, 6, 7])
        parts = [_apply(local, v, x[perm[i : i + 4]]) for i in (0, 4)]
        ref = np.empty_like(np.asarray(out))
        ref[perm[:4]], ref[perm[4:]] = parts[0][0], parts[1][0]
        ref_upd = jax.tree.map(lambda a, b: (a + b) / 2, parts[0][1], parts[1][1])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref_upd), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_zero_init_last_bn_makes_blocks_start_as_identity():
    model = create_model("resnet8", num_classes=3, width=0.5, zero_init_last_bn=True)
    x = _normal(5, (2, 8, 8, 1))
    v = jax.jit(lambda x: _init(model, x.shape))(x)
    p = v["params"]
    for blk in ("BasicBlock_0", "BasicBlock_1", "BasicBlock_2"):
        np.testing.assert_array_equal(p[blk]["BatchNorm_1"]["scale"], 0.0)
        assert np.all(np.asarray(p[blk]["BatchNorm_0"]["scale"]) == 1.0)
    np.testing.assert_array_equal(p["BatchNorm_0"]["scale"], 1.0)  # the stem's norm
    # The first block keeps its shape, so its output is relu(input) = its input.
    _, inter = jax.jit(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
    )(v, x)
    stem = nn.relu(inter["intermediates"]["BatchNorm_0"]["__call__"][0])
    block = inter["intermediates"]["BasicBlock_0"]["__call__"][0]
    np.testing.assert_allclose(block, stem, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(stem).max()) > 0


def test_group_norm_and_no_norm_variants():
    x = _normal(6, (2, 8, 8, 3))
    gn = create_model("resnet8", num_classes=4, norm="group", width=0.5, group_norm_groups=4)
    v = jax.jit(lambda x: _init(gn, x.shape))(x)
    assert "batch_stats" not in v
    assert v["params"]["GroupNorm_0"]["scale"].shape == (8,)
    # GroupNorm does not couple examples: one example alone gives the same logits.
    f = jax.jit(lambda v, x: gn.apply(v, x, train=True))
    np.testing.assert_allclose(f(v, x[:1]), f(v, x)[:1], rtol=1e-5, atol=1e-5)
    none = create_model("resnet8", num_classes=4, norm="none", width=0.5)
    v = jax.eval_shape(lambda: _init(none, x.shape))
    assert "batch_stats" not in v
    assert "bias" in v["params"]["stem_conv"]
    assert models.group_count(8, 4) == 4 and models.group_count(12, 8) == 4


def test_bfloat16_compute_with_float32_params():
    model = create_model("resnet8", num_classes=3, width=0.5, dtype=jnp.bfloat16)
    x = _normal(7, (2, 8, 8, 3))
    v = jax.jit(lambda x: _init(model, x.shape))(x)
    assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(v, x)
    conv_dtypes = {
        e.outvars[0].aval.dtype
        for e in jaxpr.jaxpr.eqns
        if e.primitive.name == "conv_general_dilated"
    }
    assert conv_dtypes == {jnp.dtype(jnp.bfloat16)}
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    assert out.dtype == jnp.float32
    f32 = create_model("resnet8", num_classes=3, width=0.5)
    ref = jax.jit(lambda v, x: f32.apply(v, x, train=False))(v, x)
    # bf16 rounds each layer's inputs and weights to 8 significant bits (relative error
    # <= 2^-9 each, <= 2^-8 per product); resnet8 has 8 weight layers, so a worst-case
    # linear accumulation bounds the logit error by 8 * 2^-8 of their scale (measured:
    # 0.003 at scale 0.7, ~0.4%). Catches: a layer (BN statistics, the head) running in
    # a lower precision than bf16 or using other weights or statistics than float32.
    tol = 8 * 2.0**-8 * float(np.max(np.abs(ref)))
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol)


def test_cifar_option_a_and_b_shortcuts():
    a = _num_params("resnet20")
    b = _num_params("resnet20", shortcut="B")
    # Option B adds two 1x1 projections (16->32, 32->64) with their BatchNorms.
    assert b - a == 16 * 32 + 32 * 64 + 2 * (32 + 64)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="resnet21"), "name"),
        (dict(name="resnet20", norm="layer"), "norm"),
        (dict(name="resnet20", width=0.0), "width"),
        (dict(name="resnet20", dtype=jnp.float16), "dtype"),
        (dict(name="resnet20", bn_ghost_size=0), "bn_ghost_size"),
        (dict(name="resnet20", num_classes=0), "num_classes"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    kwargs.setdefault("num_classes", 10)
    with pytest.raises(ValueError, match=match):
        create_model(**kwargs)


def test_integer_images_are_rejected():
    model = create_model("resnet8", num_classes=3, width=0.5)
    x = jnp.zeros((1, 8, 8, 1), jnp.uint8)
    with pytest.raises(ValueError, match="float"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


@pytest.mark.parametrize("norm", ["batch", "none", "group"])
def test_mlp_shapes_parameters_and_macs(norm):
    m = create_model("mlp2", num_classes=10, norm=norm, width=0.5)
    v = jax.eval_shape(lambda: _init(m, (3, 28, 28, 1)))  # shapes and dtypes: no compile
    hidden = 128
    p = v["params"]
    assert p["Dense_0"]["kernel"].shape == (784, hidden)
    assert p["Dense_1"]["kernel"].shape == (hidden, hidden)
    assert p["head"]["kernel"].shape == (hidden, 10)
    # a bias on the hidden layers only without normalization (BN/GN bring their own shift)
    assert ("bias" in p["Dense_0"]) == (norm == "none")
    assert ("batch_stats" in v) == (norm == "batch")
    macs = count_macs("mlp2", (28, 28, 1), 10, norm=norm, width=0.5)
    assert macs == 784 * hidden + hidden * hidden + hidden * 10
    logits = jax.eval_shape(lambda v: m.apply(v, jnp.ones((3, 28, 28, 1)), train=False), v)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_mlp_with_batch_norm_is_scale_invariant_in_its_hidden_weights():
    m = create_model("mlp2", num_classes=10, width=0.25)
    v = _jit_init(m, (8, 28, 28, 1))
    x = _normal(1, (8, 28, 28, 1))
    apply = jax.jit(lambda v: m.apply(v, x, train=True, mutable=["batch_stats"])[0])
    out = apply(v)
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 7.0 if "Dense_0" in jax.tree_util.keystr(path) else a, v)
    out2 = apply(scaled)
    np.testing.assert_allclose(out, out2, rtol=1e-4, atol=1e-4)


# --- conv_impl: convolution as patches @ kernel (lars_jax.models.conv) -----------------------

_CONV_CASES = [
    # (input NHWC, kernel HWIO, strides, padding, kernel dilation)
    ((2, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((2, 9, 9, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    ((1, 15, 13, 2), (7, 7, 2, 4), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    ((2, 10, 10, 3), (3, 3, 3, 2), (1, 2), "SAME", (2, 1)),
    ((2, 10, 11, 3), (2, 3, 3, 2), (3, 1), "VALID", (1, 1)),
]


@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding,dilation", _CONV_CASES)
def test_patch_conv_equals_lax_conv_and_its_gradients(lhs_shape, rhs_shape, strides, padding,
                                                      dilation):
    from lars_jax.models.conv import patch_conv_general_dilated

    lhs, rhs = _normal(0, lhs_shape), _normal(1, rhs_shape)
    dn = ("NHWC", "HWIO", "NHWC")

    def ref(a, k):
        return jax.lax.conv_general_dilated(a, k, strides, padding, rhs_dilation=dilation,
                                            dimension_numbers=dn,
                                            precision=jax.lax.Precision.HIGHEST)

    def ours(a, k):
        return patch_conv_general_dilated(a, k, strides, padding, rhs_dilation=dilation,
                                          dimension_numbers=dn,
                                          precision=jax.lax.Precision.HIGHEST)

    cot = _normal(2, jax.eval_shape(ref, lhs, rhs).shape)

    @jax.jit  # one program per case: run eagerly, each patch slice compiled on its own
    def both(a, k):
        grads = [jax.grad(lambda a, k, f=f: jnp.sum(f(a, k) * cot), argnums=(0, 1))(a, k)
                 for f in (ref, ours)]
        return ref(a, k), ours(a, k), grads

    want, got, (g_ref, g_our) = both(lhs, rhs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(g_our, g_ref, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_patch_conv_rejects_what_it_does_not_implement():
    from lars_jax.models.conv import patch_conv_general_dilated

    x, k = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="feature_group_count"):
        patch_conv_general_dilated(x, k, (1, 1), "SAME", feature_group_count=2)
    with pytest.raises(ValueError, match="lhs_dilation"):
        patch_conv_general_dilated(x, k, (1, 1), "SAME", lhs_dilation=(2, 2))
    with pytest.raises(ValueError, match="dimension_numbers"):
        patch_conv_general_dilated(jnp.zeros((1, 2, 4, 4)), jnp.zeros((2, 2, 3, 3)), (1, 1),
                                   "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    with pytest.raises(ValueError, match="conv_impl"):
        create_model("resnet8", num_classes=10, conv_impl="fast")


# (A ResNet-50 case in evaluation mode took ~27 s of the suite; its bottleneck convolutions,
# 1x1 and strided, are among the configurations checked one by one above.)
@pytest.mark.slow
@pytest.mark.parametrize("name,shape,width,train", [("resnet8", (3, 12, 12, 3), 0.25, True)])
def test_conv_impl_patches_gives_the_same_model_and_train_step(name, shape, width, train):
    """Same parameter tree, same logits, same gradients as nn.Conv's XLA convolution."""
    kw = dict(num_classes=10, width=width)
    xla = create_model(name, conv_impl="xla", **kw)
    pat = create_model(name, conv_impl="patches", **kw)
    x = _normal(3, shape)
    v_xla, v_pat = _jit_init(xla, shape), _jit_init(pat, shape)
    assert jax.tree.structure(v_xla) == jax.tree.structure(v_pat)
    for a, b in zip(jax.tree.leaves(v_xla), jax.tree.leaves(v_pat), strict=True):
        np.testing.assert_array_equal(a, b)

    def loss(model, params):
        logits, _ = model.apply({**v_xla, "params": params}, x, train=train,
                                mutable=["batch_stats"])
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), logits

    with jax.default_matmul_precision("highest"):
        (l_x, lg_x), g_x = jax.jit(jax.value_and_grad(functools.partial(loss, xla),
                                                      has_aux=True))(v_xla["params"])
        (l_p, lg_p), g_p = jax.jit(jax.value_and_grad(functools.partial(loss, pat),
                                                      has_aux=True))(v_xla["params"])
    np.testing.assert_allclose(lg_p, lg_x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l_p, l_x, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-7)


@pytest.mark.slow
def test_conv_impl_patches_keeps_the_layers_nn_conv_for_per_example_norms():
    """value_grad_and_norms intercepts nn.Conv by exact type: the norms must not change."""
    from lars_jax.per_example import value_grad_and_norms

    shape = (4, 8, 8, 3)
    x, y = _normal(4, shape), jnp.array([0, 1, 2, 3])
    models_ = {impl: create_model("resnet8", num_classes=10, width=0.25, conv_impl=impl)
               for impl in ("xla", "patches")}
    v = _jit_init(models_["xla"], shape)

    def loss_fn(params, model):
        logits, _ = model.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), y])

    with jax.default_matmul_precision("highest"):
        out = {impl: jax.jit(functools.partial(value_grad_and_norms, functools.partial(
            loss_fn, model=m)))(v["params"]) for impl, m in models_.items()}
    for a, b in zip(jax.tree.leaves(out["patches"][2]), jax.tree.leaves(out["xla"][2]),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
