"""Tests of the optimizers lars, larc, clars, sgd against a float64 reference and optax."""

from __future__ import annotations

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import lars_run, lars_step, random_tree
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import lars_jax
import lars_jax.testing

# No shrinking: a failing example is reported as found (shrinking JAX code is slow).
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True, phases=PHASES)

hparams = st.fixed_dictionaries({
    "lr": st.floats(0.01, 2.0),
    "wd": st.sampled_from([0.0, 1e-4, 5e-3, 0.1]),
    "tc": st.sampled_from([1e-3, 0.02, 1.0]),
    "momentum": st.sampled_from([0.0, 0.5, 0.9]),
    "nesterov": st.booleans(),
    "eps": st.sampled_from([0.0, 1e-6]),
})


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _to_jax(tree, dtype=jnp.float32):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _run(tx, params, grads_per_step, use_jit: bool, **extra):
    update = jax.jit(tx.update) if use_jit else tx.update
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = update(grads, state, params, **extra)
        params = optax.apply_updates(params, updates)
    return params, state


# A scalar, a vector, a matrix and a conv kernel (every rank of SHAPES) in one tree: the
# update is per tensor and the default mask goes by rank, so each example checks every
# case, and all examples share one tree structure (one compiled program).
ALL_SHAPES = [0, 1, 3, 5]


def _numbers(hp) -> dict:
    """The numeric hyperparameters of a `hparams` example, as factory keywords."""
    return dict(learning_rate=hp["lr"], weight_decay=hp["wd"], trust_coefficient=hp["tc"],
                momentum=hp["momentum"], eps=hp["eps"])


@functools.cache
def _compiled_update(factory, static: tuple):
    @jax.jit
    def update(numbers, grads, state, params):
        return factory(**numbers, **dict(static)).update(grads, state, params)

    return update


def _compiled_tx(factory, numbers: dict, **static):
    """``(init, update)`` of ``factory(**numbers, **static)``, its update jitted once per
    factory and static arguments: the numbers are traced arguments (weakly typed, like
    Python floats), so the examples of a hypothesis test share one program instead of
    compiling one each. (A traced zero weight decay takes the decay path; the Python 0.0
    shortcut of the trust ratio is checked against the reference in test_trust_ratio.)"""
    tx = factory(**numbers, **static)  # validates the values, gives the initial state
    compiled = _compiled_update(factory, tuple(sorted(static.items())))
    return tx.init, functools.partial(compiled, numbers)


def _run_compiled(factory, numbers: dict, params, grads_per_step, **static):
    """`_run` under jit of ``factory(**numbers, **static)``, compiled as `_compiled_tx`."""
    init, update = _compiled_tx(factory, numbers, **static)
    state = init(params)
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _assert_tree_close(actual, expected_leaves, rtol, atol):
    for a, e in zip(_leaves(actual), expected_leaves, strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


# ----------------------------------------------------------------- float64 reference


@SETTINGS
@given(seed=st.integers(0, 2**16), hp=hparams, clip=st.sampled_from([None, 1.0]))
def test_lars_matches_float64_reference_float32(seed, hp, clip):
    """Jitted (the eager update equals the jitted one: JitTest)."""
    params = random_tree(seed, ALL_SHAPES)
    steps = [random_tree(seed + 1 + t, ALL_SHAPES, scale=0.3) for t in range(4)]
    got, _ = _run_compiled(lars_jax.lars, _numbers(hp), _to_jax(params),
                           [_to_jax(g) for g in steps], nesterov=hp["nesterov"], clip=clip)
    mask = [np.ndim(x) > 1 for x in jax.tree.leaves(params)]
    want = lars_run(_leaves(params), [_leaves(g) for g in steps], lrs=[hp["lr"]] * 4,
                    wds=[hp["wd"]] * 4, tc=hp["tc"], momentum=hp["momentum"],
                    nesterov=hp["nesterov"], eps=hp["eps"], mask=mask, clip=clip)
    _assert_tree_close(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=6, deadline=None, derandomize=True, phases=PHASES)
@given(seed=st.integers(0, 2**16), hp=hparams)
def test_lars_bfloat16_params_match_reference_step_by_step(seed, hp):
    """bf16 params and grads: each step's update matches float64 math on the same inputs."""
    init, update = _compiled_tx(lars_jax.lars, _numbers(hp), nesterov=hp["nesterov"])
    params = _to_jax(random_tree(seed, ALL_SHAPES), jnp.bfloat16)
    state = init(params)
    mask = [np.ndim(x) > 1 for x in jax.tree.leaves(params)]
    for t in range(3):
        grads = _to_jax(random_tree(seed + 1 + t, ALL_SHAPES, scale=0.3), jnp.bfloat16)
        # The reference starts from the optimizer's own (bf16) momentum buffer, so that
        # only this step's rounding is compared (optax's trace holds -v: lr's sign flip).
        v_old = [-v for v in _leaves(state[-1].trace)]
        updates, state = update(grads, state, params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        _, v_new, want = lars_step(_leaves(params), _leaves(grads), v_old, lr=hp["lr"],
                                   wd=hp["wd"], tc=hp["tc"], momentum=hp["momentum"],
                                   nesterov=hp["nesterov"], eps=hp["eps"], mask=mask)
        for got, w, v0, v1 in zip(_leaves(updates), want, v_old, v_new, strict=True):
            u = v1 - hp["momentum"] * v0
            # A few bf16 roundings (2^-9 relative each) of the operands of v = m*v + u.
            bound = 0.02 * (np.abs(v0) + np.abs(u) + np.abs(v1)) + 1e-30
            assert np.all(np.abs(got - w) <= bound), (got, w, bound)
        params = optax.apply_updates(params, updates)
        stats = lars_jax.trust_ratio_stats(state)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(stats))


def test_bfloat16_norms_are_accumulated_in_float32():
    # 4096 entries of 1.0 + 2^-8: a bf16 sum of squares would stall long before 4096.
    w = jnp.full((64, 64), 1.0 + 2**-7, jnp.bfloat16)
    g = jnp.full((64, 64), 2**-7, jnp.bfloat16)
    tx = lars_jax.lars(1.0, trust_coefficient=1.0, momentum=0.0)
    _, state = tx.update({"k": g}, tx.init({"k": w}), {"k": w})
    stats = lars_jax.trust_ratio_stats(state)
    want_pn = 64 * float(jnp.asarray(w[0, 0], jnp.float32))
    np.testing.assert_allclose(float(stats["param_norm"]["k"]), want_pn, rtol=1e-6)
    np.testing.assert_allclose(float(stats["grad_norm"]["k"]), 64 * 2**-7, rtol=1e-6)


# ----------------------------------------------------------------- optax parity


@settings(max_examples=8, deadline=None, derandomize=True, phases=PHASES)
@given(seed=st.integers(0, 2**16), hp=hparams)
def test_optax_form_with_all_true_mask_equals_optax_lars(seed, hp):
    params = _to_jax(random_tree(seed, ALL_SHAPES))
    steps = [_to_jax(random_tree(seed + 1 + t, ALL_SHAPES, scale=0.3)) for t in range(4)]
    ours, _ = _run_compiled(lars_jax.lars, _numbers(hp), params, steps,
                            nesterov=hp["nesterov"], denominator="optax", mask=True)
    ref, _ = _run_compiled(optax.lars, _numbers(hp), params, steps, nesterov=hp["nesterov"])
    # Float32 rounding only (4 steps, ratios up to ~1e3 amplify ulp differences): 1e-5
    # relative is ~80 ulps, far below any difference of formula.
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-6)


def _lars_masked_out(learning_rate, **kw):
    """lars_jax.lars with an all-False mask pytree for an ALL_SHAPES tree."""
    mask = jax.tree.map(lambda _: False, random_tree(0, ALL_SHAPES))
    return lars_jax.lars(learning_rate, mask=mask, **kw)


@settings(max_examples=6, deadline=None, derandomize=True, phases=PHASES)
@given(seed=st.integers(0, 2**16), hp=hparams)
def test_all_false_mask_is_momentum_sgd(seed, hp):
    params = _to_jax(random_tree(seed, ALL_SHAPES))
    steps = [_to_jax(random_tree(seed + 1 + t, ALL_SHAPES, scale=0.3)) for t in range(4)]
    nesterov = hp["nesterov"]
    ours, state = _run_compiled(_lars_masked_out, _numbers(hp), params, steps,
                                nesterov=nesterov)
    sgd_numbers = dict(learning_rate=hp["lr"], momentum=hp["momentum"])
    ref, _ = _run_compiled(optax.sgd, sgd_numbers, params, steps, nesterov=nesterov)
    # optax.sgd applies lr after the trace, lars before it: equal up to rounding.
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-6)
    same, _ = _run_compiled(lars_jax.sgd, sgd_numbers, params, steps, nesterov=nesterov)
    chex.assert_trees_all_equal(ours, same)
    assert jax.tree.leaves(lars_jax.trust_ratio_stats(state)["trust_ratio"]) == []


# ----------------------------------------------------------------- properties


@SETTINGS
@given(seed=st.integers(0, 2**16), hp=hparams)
def test_larc_rate_never_exceeds_lars_rate(seed, hp):
    params = _to_jax(random_tree(seed, ALL_SHAPES))
    grads = _to_jax(random_tree(seed + 1, ALL_SHAPES, scale=0.3))
    numbers = {**_numbers(hp), "momentum": 0.0}
    (u_lars, s_lars), (u_larc, s_larc) = (
        update(grads, init(params), params)
        for init, update in (_compiled_tx(f, numbers) for f in (lars_jax.lars, lars_jax.larc)))
    r_lars = jax.tree.leaves(lars_jax.trust_ratio_stats(s_lars)["trust_ratio"])
    r_larc = jax.tree.leaves(lars_jax.trust_ratio_stats(s_larc)["trust_ratio"])
    for a, b in zip(r_larc, r_lars, strict=True):
        assert float(a) <= float(b) + 1e-7
        assert float(a) <= 1.0 + 1e-7
        np.testing.assert_allclose(float(a), min(float(b), 1.0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(u_larc), jax.tree.leaves(u_lars), strict=True):
        assert float(jnp.linalg.norm(a)) <= float(jnp.linalg.norm(b)) * (1 + 1e-6) + 1e-12


@settings(max_examples=6, deadline=None, derandomize=True, phases=PHASES)
@given(seed=st.integers(0, 2**16), hp=hparams, c=st.sampled_from([0.01, 0.5, 4.0, 100.0]))
def test_scale_invariance_of_paper_form(seed, hp, c):
    """w -> c*w and g -> g/c scale every LARS update by c (paper form, wd = eps = 0)."""
    params = random_tree(seed, ALL_SHAPES)
    steps = [random_tree(seed + 1 + t, ALL_SHAPES, scale=0.3) for t in range(3)]
    init, update = _compiled_tx(
        lars_jax.lars, dict(learning_rate=hp["lr"], trust_coefficient=hp["tc"],
                            momentum=hp["momentum"]), nesterov=hp["nesterov"], mask=True)
    p1, p2 = _to_jax(params), _to_jax(jax.tree.map(lambda x: c * x, params))
    s1, s2 = init(p1), init(p2)
    for g in steps:
        u1, s1 = update(_to_jax(g), s1, p1)
        u2, s2 = update(_to_jax(jax.tree.map(lambda x: x / c, g)), s2, p2)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            np.testing.assert_allclose(np.asarray(b), c * np.asarray(a), rtol=1e-4,
                                       atol=1e-6 * c * float(jnp.max(jnp.abs(a))))
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)


@pytest.mark.parametrize("denominator", ["paper", "optax"])
@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_zero_weights_and_zero_grads_give_finite_updates(denominator, wd):
    params = {"w0": jnp.zeros((3, 4)), "w1": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    grads = {"w0": jnp.ones((3, 4)), "w1": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
    for tx in (lars_jax.lars(0.1, weight_decay=wd, denominator=denominator),
               lars_jax.larc(0.1, weight_decay=wd, denominator=denominator),
               lars_jax.lars(0.1, weight_decay=wd, denominator=denominator, clip=0.5)):
        state = tx.init(params)
        for _ in range(2):
            updates, state = jax.jit(tx.update)(grads, state, params)
            chex.assert_tree_all_finite(updates)
        stats = lars_jax.trust_ratio_stats(state)
        # Zero norm -> ratio 1, so the update is the plain (decayed) SGD step.
        assert float(stats["trust_ratio"]["w0"]) == 1.0
        if denominator == "paper" or wd == 0.0:
            assert float(stats["trust_ratio"]["w1"]) == 1.0
    zero = {"w": jnp.zeros((2, 2))}
    tx = lars_jax.clars(0.1, weight_decay=wd)
    updates, _ = tx.update(zero, tx.init(zero), zero, per_example_norms={"w": jnp.zeros(3)})
    chex.assert_tree_all_finite(updates)


def test_default_mask_excludes_vectors_and_scalars():
    params = {"conv": jnp.ones((3, 3, 2, 4)), "dense": jnp.ones((4, 2)),
              "bias": jnp.ones(2), "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
              "scalar": jnp.ones(())}
    grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
    lr, wd = 0.1, 0.01
    tx = lars_jax.lars(lr, weight_decay=wd, trust_coefficient=0.01)
    updates, state = tx.update(grads, tx.init(params), params)
    for path in (("bias",), ("bn", "scale"), ("bn", "bias"), ("scalar",)):
        node_u, node_g = updates, grads
        for k in path:
            node_u, node_g = node_u[k], node_g[k]
        # Plain SGD: no weight decay, no trust ratio.
        np.testing.assert_allclose(node_u, -lr * node_g, rtol=1e-6)
    ratios = lars_jax.trust_ratio_stats(state)["trust_ratio"]
    assert isinstance(ratios["bias"], optax.MaskedNode)
    assert isinstance(ratios["bn"]["scale"], optax.MaskedNode)
    assert set(jax.tree_util.keystr(p) for p, _ in
               jax.tree_util.tree_flatten_with_path(ratios)[0]) == {"['conv']", "['dense']"}
    for k in ("conv", "dense"):
        assert not np.allclose(updates[k], -lr * grads[k])
    assert lars_jax.default_mask(params) == {
        "conv": True, "dense": True, "bias": False,
        "bn": {"scale": False, "bias": False}, "scalar": False}


def test_callable_and_prefix_masks():
    params = {"a": {"k": jnp.ones((2, 3))}, "b": {"k": jnp.ones((2, 3))}}
    grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
    tx = lars_jax.lars(0.1, mask={"a": True, "b": False}, trust_coefficient=0.01)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["b"]["k"], -0.1 * grads["b"]["k"])
    assert not np.allclose(updates["a"]["k"], -0.1 * grads["a"]["k"])
    tx2 = lars_jax.lars(0.1, mask=lambda p: {"a": True, "b": False}, trust_coefficient=0.01)
    updates2, _ = tx2.update(grads, tx2.init(params), params)
    chex.assert_trees_all_equal(updates, updates2)


# ----------------------------------------------------------------- jit, schedules


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_same_results_with_and_without_jit(self):
        params = _to_jax(random_tree(0, [1, 3, 5, 0]))
        grads = _to_jax(random_tree(1, [1, 3, 5, 0], scale=0.3))
        norms = jax.tree.map(lambda x: jnp.linspace(1.0, 2.0, 4), params)
        txs = (lars_jax.lars(0.5, weight_decay=1e-3, trust_coefficient=0.05),
               lars_jax.larc(0.5, weight_decay=1e-3, trust_coefficient=0.05),
               lars_jax.clars(0.5, weight_decay=1e-3, trust_coefficient=0.05),
               lars_jax.sgd(0.5, weight_decay=1e-3, decoupled_weight_decay=True))
        for tx in txs:
            update = self.variant(tx.update)
            extra = {"per_example_norms": norms} if tx is txs[2] else {}
            state = tx.init(params)
            p = params
            for _ in range(2):
                u, state = update(grads, state, p, **extra)
                p = optax.apply_updates(p, u)
            ref_state = tx.init(params)
            q = params
            for _ in range(2):
                u, ref_state = jax.jit(tx.update)(grads, ref_state, q, **extra)
                q = optax.apply_updates(q, u)
            chex.assert_trees_all_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("factory", [lars_jax.lars, lars_jax.larc])
def test_inject_hyperparams_with_lr_and_weight_decay_schedules(factory):
    ids = [2, 3, 5, 1]
    params = random_tree(3, ids)
    steps = [random_tree(10 + t, ids, scale=0.3) for t in range(5)]
    lr_sched = optax.linear_schedule(0.1, 1.0, 4)
    wd_sched = optax.linear_schedule(0.0, 0.05, 4)
    tx = optax.inject_hyperparams(factory)(learning_rate=lr_sched, weight_decay=wd_sched,
                                           trust_coefficient=0.02)
    got, state = _run(tx, _to_jax(params), [_to_jax(g) for g in steps], use_jit=True)
    assert lars_jax.trust_ratio_stats(state) is not None
    np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), 1.0)
    mask = [np.ndim(x) > 1 for x in jax.tree.leaves(params)]
    clip = 1.0 if factory is lars_jax.larc else None
    want = lars_run(_leaves(params), [_leaves(g) for g in steps],
                    lrs=[float(lr_sched(t)) for t in range(5)],
                    wds=[float(wd_sched(t)) for t in range(5)],
                    tc=0.02, momentum=0.9, mask=mask, clip=clip)
    _assert_tree_close(got, want, rtol=1e-5, atol=1e-6)
    # The same schedules passed directly (no inject_hyperparams) give the same result.
    direct, _ = _run(factory(lr_sched, weight_decay=wd_sched, trust_coefficient=0.02),
                     _to_jax(params), [_to_jax(g) for g in steps], use_jit=True)
    chex.assert_trees_all_close(direct, got, rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_clars_and_sgd():
    params = _to_jax(random_tree(4, [2, 3]))
    grads = _to_jax(random_tree(5, [2, 3], scale=0.3))
    norms = jax.tree.map(lambda x: jnp.array([1.0, 2.0]), params)
    sched = optax.linear_schedule(0.1, 1.0, 4)
    tx = optax.inject_hyperparams(lars_jax.clars)(learning_rate=sched, weight_decay=sched)
    state = tx.init(params)
    u, state = jax.jit(tx.update)(grads, state, params, per_example_norms=norms)
    chex.assert_tree_all_finite(u)
    np.testing.assert_allclose(
        float(lars_jax.trust_ratio_stats(state)["grad_norm"]["layer0"]["p1"]), 1.5)
    for decoupled in (False, True):
        tx = optax.inject_hyperparams(lars_jax.sgd, static_args=("decoupled_weight_decay",))(
            learning_rate=sched, weight_decay=sched, decoupled_weight_decay=decoupled)
        u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        chex.assert_tree_all_finite(u)


# ----------------------------------------------------------------- sgd


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_coupled_and_decoupled_weight_decay(nesterov):
    ids = [2, 1, 5]
    params = random_tree(7, ids)
    steps = [random_tree(20 + t, ids, scale=0.3) for t in range(3)]
    lr, wd, m = 0.3, 0.05, 0.8
    mask = [np.ndim(x) > 1 for x in jax.tree.leaves(params)]
    # Coupled: the reference with ratio forced to 1 on masked tensors (tc irrelevant).
    got, _ = _run(lars_jax.sgd(lr, momentum=m, nesterov=nesterov, weight_decay=wd),
                  _to_jax(params), [_to_jax(g) for g in steps], use_jit=True)
    ws = _leaves(params)
    vs = [np.zeros_like(w) for w in ws]
    for gs in steps:
        new_ws, new_vs = [], []
        for w, g, v, mk in zip(ws, _leaves(gs), vs, mask, strict=True):
            u = lr * (g + (wd * w if mk else 0.0))
            v = m * v + u
            new_ws.append(w - (m * v + u if nesterov else v))
            new_vs.append(v)
        ws, vs = new_ws, new_vs
    _assert_tree_close(got, ws, rtol=1e-5, atol=1e-6)
    # Decoupled: w <- w - v - lr * wd * w with v = m v + lr g.
    got, _ = _run(lars_jax.sgd(lr, momentum=m, nesterov=nesterov, weight_decay=wd,
                               decoupled_weight_decay=True),
                  _to_jax(params), [_to_jax(g) for g in steps], use_jit=True)
    ws = _leaves(params)
    vs = [np.zeros_like(w) for w in ws]
    for gs in steps:
        new_ws, new_vs = [], []
        for w, g, v, mk in zip(ws, _leaves(gs), vs, mask, strict=True):
            v = m * v + lr * g
            step = m * v + lr * g if nesterov else v
            new_ws.append(w - step - (lr * wd * w if mk else 0.0))
            new_vs.append(v)
        ws, vs = new_ws, new_vs
    _assert_tree_close(got, ws, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize("factory", [lars_jax.lars, lars_jax.larc, lars_jax.clars])
@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(learning_rate=optax.linear_schedule(-1.0, 1.0, 10)), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(weight_decay=optax.constant_schedule(-1.0)), "weight_decay"),
    (dict(trust_coefficient=-1.0), "trust_coefficient"),
    (dict(eps=-1.0), "eps"),
    (dict(denominator="nope"), "denominator"),
    (dict(clip=0.0), "clip"),
    (dict(clip=-1.0), "clip"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(factory, kwargs, name):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(learning_rate=0.1, momentum=1.5), "momentum"),
    (dict(learning_rate=0.1, weight_decay=-0.1), "weight_decay"),
])
def test_sgd_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lars_jax.sgd(**kwargs)


def test_bad_values_under_inject_hyperparams_raise_at_init():
    params = {"k": jnp.ones((2, 2))}
    tx = optax.inject_hyperparams(lars_jax.lars)(learning_rate=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        tx.init(params)
    tx = optax.inject_hyperparams(lars_jax.lars)(
        learning_rate=0.1, weight_decay=optax.linear_schedule(-1.0, 0.0, 5))
    with pytest.raises(ValueError, match="weight_decay"):
        tx.init(params)


def test_clars_requires_matching_per_example_norms():
    params = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = lars_jax.clars(0.1)
    state = tx.init(params)
    with pytest.raises(ValueError, match="per_example_norms"):
        tx.update(grads, state, params)
    with pytest.raises(ValueError, match="per_example_norms"):
        tx.update(grads, state, params, per_example_norms={"k": jnp.ones(3)})
    with pytest.raises(ValueError, match="per_example_norms"):
        tx.update(grads, state, params,
                  per_example_norms={"k": jnp.ones((3, 1)), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="per_example_norms"):
        jax.jit(tx.update)(grads, state, params,
                           per_example_norms={"k": jnp.ones(()), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="denominator"):
        lars_jax.clars(0.1, denominator="optax")
    u, _ = tx.update(grads, state, params,
                     per_example_norms={"k": jnp.ones(3), "b": jnp.ones(3)})
    chex.assert_tree_all_finite(u)


# --------------------------------------------- magnitudes where trust ratios break

_TINY32 = float(np.finfo(np.float32).tiny)
magnitudes = st.sampled_from([0.0, 1e-40, 1e-30, 1e-20, 1e-3, 1.0, 1e20])


def _flushed64(tree):
    """The float32 values XLA computes with (denormals flushed to zero), as float64."""
    def flush(x):
        x = np.asarray(np.asarray(x, np.float32), np.float64)
        return np.where(np.abs(x) < _TINY32, 0.0, x)
    return jax.tree.map(flush, tree)


@settings(max_examples=25, deadline=None, derandomize=True, phases=PHASES)
@given(seed=st.integers(0, 2**16), w_mag=magnitudes, g_mag=magnitudes,
       hp=hparams, clip=st.sampled_from([None, 1.0]))
def test_lars_step_with_zero_denormal_tiny_huge_tensors_matches_reference(
    seed, w_mag, g_mag, hp, clip
):
    params = random_tree(seed, ALL_SHAPES, scale=w_mag)
    grads = random_tree(seed + 1, ALL_SHAPES, scale=g_mag)
    init, update = _compiled_tx(lars_jax.lars, _numbers(hp), nesterov=hp["nesterov"],
                                clip=clip)
    p32 = _to_jax(params)
    updates, _ = update(_to_jax(grads), init(p32), p32)
    ws, gs = _leaves(_flushed64(params)), _leaves(_flushed64(grads))
    mask = [np.ndim(x) > 1 for x in ws]
    _, _, want = lars_step(ws, gs, [np.zeros_like(w) for w in ws], lr=hp["lr"], wd=hp["wd"],
                           tc=hp["tc"], momentum=hp["momentum"], nesterov=hp["nesterov"],
                           eps=hp["eps"], mask=mask, clip=clip)
    for got, exp in zip(_leaves(updates), want, strict=True):
        assert np.all(np.isfinite(got))
        scale = float(np.max(np.abs(exp), initial=0.0))
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=1e-6 * scale + 1e-37)


# ------------------------------------------------------ silent misconfigurations


def test_callable_mask_under_inject_hyperparams_without_static_args_raises():
    params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
    user_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    for factory in (lars_jax.lars, lars_jax.larc, lars_jax.clars):
        for mask in (lars_jax.default_mask, user_mask):
            with pytest.raises(ValueError, match="static_args"):
                optax.inject_hyperparams(factory)(learning_rate=0.1, mask=mask).init(params)
    # With static_args the mask is applied: the kernel gets the ratio, the bias does not.
    tx = optax.inject_hyperparams(lars_jax.lars, static_args=("mask",))(
        learning_rate=0.1, mask=user_mask)
    _, state = tx.update(params, tx.init(params), params)
    stats = lars_jax.trust_ratio_stats(state)
    assert isinstance(stats["trust_ratio"]["b"], optax.MaskedNode)
    assert not isinstance(stats["trust_ratio"]["k"], optax.MaskedNode)
    with pytest.raises(ValueError, match="mask=False"):
        lars_jax.lars(0.1, mask=False)


def test_multi_steps_averages_clars_norms_over_micro_batches():
    """k micro-batches: the ratio uses the mean over ALL examples' norms (CLARS rule)."""
    rng = np.random.default_rng(0)
    params = {"k": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
              "b": jnp.zeros(3)}
    micro_grads = [jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape),
                                                      jnp.float32), params) for _ in range(3)]
    micro_norms = [jax.tree.map(lambda _: jnp.asarray(rng.uniform(0.5, 2.0, 4), jnp.float32),
                                params) for _ in range(3)]
    hp = dict(learning_rate=0.5, weight_decay=1e-3, trust_coefficient=0.02, momentum=0.9)
    tx = lars_jax.multi_steps(lars_jax.clars(**hp), every_k_schedule=3)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g, n in zip(micro_grads, micro_norms, strict=True):
        updates, state = update(g, state, params, per_example_norms=n)
    # Reference: one CLARS step on the mean gradient with the mean of all 12 norms.
    mean_g = jax.tree.map(lambda *g: sum(g) / 3, *micro_grads)
    all_norms = jax.tree.map(lambda *n: jnp.concatenate(n), *micro_norms)
    want = lars_jax.testing.reference_lars_updates(
        params, [mean_g], per_example_norms_per_step=[all_norms], **hp)[0]
    chex.assert_trees_all_close(jax.tree.map(np.asarray, updates), want, rtol=1e-5, atol=1e-7)
    assert float(state.norm_count) == 0.0  # reset after the emitted update
    # optax.MultiSteps alone uses the last micro-batch's norms: a different step.
    plain = optax.MultiSteps(lars_jax.clars(**hp), every_k_schedule=3)
    pstate = plain.init(params)
    for g, n in zip(micro_grads, micro_norms, strict=True):
        pupdates, pstate = plain.update(g, pstate, params, per_example_norms=n)
    assert not np.allclose(np.asarray(pupdates["k"]), np.asarray(want["k"]), rtol=1e-3)


def test_multi_steps_with_lars_equals_optax_multi_steps():
    params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
    grads = [jax.tree.map(lambda x, i=i: (0.1 + i) * x, params) for i in range(4)]
    ours = lars_jax.multi_steps(lars_jax.lars(0.1), 2)
    ref = optax.MultiSteps(lars_jax.lars(0.1), 2)
    s1, s2 = ours.init(params), ref.init(params)
    ours_update, ref_update = jax.jit(ours.update), jax.jit(ref.update)
    for g in grads:
        u1, s1 = ours_update(g, s1, params)
        u2, s2 = ref_update(g, s2, params)
        chex.assert_trees_all_equal(u1, u2)


# ------------------------------------------------------ drop-in for optax.lars (issue 24)


@pytest.mark.parametrize("factory", [lars_jax.lars, lars_jax.larc])
def test_signature_starts_with_optax_lars_signature(factory):
    """Same names, order, kinds and defaults as optax.lars; our extras are keyword-only."""
    ref = list(inspect.signature(optax.lars).parameters.values())
    ours = list(inspect.signature(factory).parameters.values())
    for r, o in zip(ref, ours[:len(ref)], strict=True):
        assert (o.name, o.kind, o.default) == (r.name, r.kind, r.default)
    extras = ours[len(ref):]
    assert [p.name for p in extras] == ["denominator", "clip", "mask"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)


def _complex_tree(seed, ids, scale=1.0):
    re, im = random_tree(seed, ids, scale), random_tree(seed + 7, ids, scale)
    return jax.tree.map(lambda a, b: jnp.asarray(a + 1j * b, jnp.complex64), re, im)


def _two_masks(params):
    """Two different masks: decay on kernels, the ratio on every layer0 tensor only."""
    wd_mask = jax.tree.map(lambda x: np.ndim(x) > 1, params)
    tr_mask = {k: jax.tree.map(lambda _, k=k: k == "layer0", v) for k, v in params.items()}
    return wd_mask, tr_mask


_TWO_MASKS = _two_masks(random_tree(0, ALL_SHAPES))


def _two_mask_lars(learning_rate, weight_decay, *, optax_lars: bool, schedule: bool,
                   callable_masks: bool, **kw):
    """optax.lars, or lars_jax.lars in the optax form, with the two masks of `_two_masks`
    on an ALL_SHAPES tree (as pytrees or as callables), the weight decay constant or a
    schedule from it to twice it."""
    wd = optax.linear_schedule(weight_decay, 2 * weight_decay, 3) if schedule else weight_decay
    wd_mask, tr_mask = _TWO_MASKS
    if callable_masks:
        wd_mask, tr_mask = (lambda p: _TWO_MASKS[0]), (lambda p: _TWO_MASKS[1])
    kw.update(weight_decay=wd, weight_decay_mask=wd_mask, trust_ratio_mask=tr_mask)
    if optax_lars:
        return optax.lars(learning_rate, **kw)
    return lars_jax.lars(learning_rate, denominator="optax", **kw)


@settings(max_examples=6, deadline=None, derandomize=True, phases=PHASES)
@given(seed=st.integers(0, 2**16), hp=hparams, complex_=st.booleans(),
       schedule=st.booleans())
def test_optax_form_with_two_different_masks_equals_optax_lars(seed, hp, complex_, schedule):
    make = _complex_tree if complex_ else lambda *a, **k: _to_jax(random_tree(*a, **k))
    params = make(seed, ALL_SHAPES)
    steps = [make(seed + 1 + t, ALL_SHAPES, scale=0.3) for t in range(3)]
    assert jax.tree.structure(_TWO_MASKS[0]) == jax.tree.structure(params)

    def run(**kw):
        return _run_compiled(_two_mask_lars, _numbers(hp), params, steps,
                             nesterov=hp["nesterov"], schedule=schedule, **kw)[0]

    ref = run(optax_lars=True, callable_masks=False)
    ours = run(optax_lars=False, callable_masks=False)
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-6)
    # Callable masks (optax's other form) give the same.
    ours2 = run(optax_lars=False, callable_masks=True)
    chex.assert_trees_all_close(ours2, ref, rtol=1e-5, atol=1e-6)


def test_optax_form_defaults_are_optax_lars_defaults():
    """denominator='optax' alone: every tensor gets decay and ratio, as optax.lars(lr, wd)."""
    params = _to_jax(random_tree(11, [1, 3, 5]))
    steps = [_to_jax(random_tree(12 + t, [1, 3, 5], scale=0.3)) for t in range(3)]
    ours, _ = _run(lars_jax.lars(0.5, 1e-2, denominator="optax"), params, steps, True)
    ref, _ = _run(optax.lars(0.5, 1e-2), params, steps, True)
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-6)
    # Positional arguments mean what they mean in optax.lars.
    pos = (0.5, 1e-2, True, 0.02, 1e-6, True, 0.8, True)
    ours, _ = _run(lars_jax.lars(*pos, denominator="optax"), params, steps, True)
    ref, _ = _run(optax.lars(*pos), params, steps, True)
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(denominator="optax", mask=True, weight_decay_mask={"k": True, "b": False}),
     "not both"),
    (dict(mask=lars_jax.default_mask, trust_ratio_mask={"k": True, "b": False}), "not both"),
    (dict(weight_decay_mask={"k": True, "b": False}), "denominator='optax'"),
    (dict(trust_ratio_mask=lambda p: p), "denominator='optax'"),
    (dict(denominator="optax", trust_ratio_mask=False), "trust_ratio_mask=False"),
    (dict(denominator="optax", trust_ratio_mask=None), "trust_ratio_mask"),
    (dict(weight_decay_mask=0.001), "weight_decay_mask"),  # lars_jax's old 3rd position
])
def test_ambiguous_or_misplaced_masks_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        lars_jax.lars(0.1, **kwargs)
    assert "\n" not in str(e.value)


# --------------------------------------- optax's own LARS cases, written here (issue 24)


def _parabola(dtype):
    start = jnp.array([-1.0, 10.0, 1.0], dtype)
    target = jnp.array([1.0, -1.0, 1.0], dtype)
    if jnp.iscomplexobj(start):
        target = target * (1 + 1j)
    return start, target, lambda p: jnp.sum(jnp.abs(p - target) ** 2)


def _rosenbrock(dtype):
    a = (1 + 1j) if jnp.issubdtype(dtype, jnp.complexfloating) else 1.0
    start = jnp.zeros(2, dtype)
    target = jnp.array([a, a**2], dtype)
    return start, target, lambda p: jnp.abs(a - p[0]) ** 2 + 100 * jnp.abs(p[1] - p[0] ** 2) ** 2


def _minimise(tx, start, loss, steps=10_000):
    def body(_, carry):
        p, s = carry
        g = jax.tree.map(jnp.conj, jax.grad(loss)(p))  # the descent direction for complex p
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    return jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0])(start)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("problem", [_parabola, _rosenbrock])
def test_optax_lars_optimisation_cases_reach_the_target_like_optax(problem, dtype):
    """optax's LARS cases (lr 1, all defaults, 10k steps); complex: was 0.84+1.43j, not 1+1j."""
    start, target, loss = problem(dtype)
    ours = _minimise(lars_jax.lars(1.0, denominator="optax"), start, loss)
    ref = _minimise(optax.lars(1.0), start, loss)
    assert ours.dtype == dtype
    chex.assert_trees_all_close(ref, target, rtol=3e-2, atol=3e-2)
    chex.assert_trees_all_close(ours, target, rtol=3e-2, atol=3e-2)
    # LARS ends jittering around the target by ~tc * lr * ||w|| per step, where float32
    # rounding decides the phase: the two are compared step for step over a shorter run.
    early = [_minimise(tx, start, loss, steps=50)
             for tx in (lars_jax.lars(1.0, denominator="optax"), optax.lars(1.0))]
    chex.assert_trees_all_close(early[0], early[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_updates_keep_the_params_dtype_and_wrap_in_inject_hyperparams(dtype):
    params = {"k": jnp.full((3, 2), 1 + 1j if dtype == jnp.complex64 else 1.0, dtype)}
    grads = jax.tree.map(lambda x: 0.5 * x, params)
    for tx in (lars_jax.lars(0.1, denominator="optax"),
               optax.inject_hyperparams(lars_jax.lars, static_args=("denominator",))(
                   learning_rate=0.1, denominator="optax")):
        u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        assert u["k"].dtype == dtype
    ref = optax.lars(0.1)
    want, _ = ref.update(grads, ref.init(params), params)
    chex.assert_trees_all_close(u, want, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)


def test_complex_paper_form_matches_float64_reference():
    params = _complex_tree(21, [1, 3, 5, 0])
    steps = [_complex_tree(22 + t, [1, 3, 5, 0], scale=0.3) for t in range(3)]
    tx = lars_jax.lars(0.5, weight_decay=1e-2, trust_coefficient=0.05, momentum=0.9)
    got, state = _run(tx, params, steps, use_jit=True)
    mask = [np.ndim(x) > 1 for x in jax.tree.leaves(params)]
    want = lars_run([np.asarray(x, np.complex128) for x in jax.tree.leaves(params)],
                    [[np.asarray(x, np.complex128) for x in jax.tree.leaves(g)] for g in steps],
                    lrs=[0.5] * 3, wds=[1e-2] * 3, tc=0.05, momentum=0.9, mask=mask)
    for a, e in zip(jax.tree.leaves(got), want, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.complex128), e, rtol=1e-5, atol=1e-6)
    stats = lars_jax.trust_ratio_stats(state)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(stats))


# ------------------------------------------------------ inputs refused (issue 25 item 8)


@pytest.mark.parametrize("factory", [lars_jax.lars, lars_jax.larc, lars_jax.clars,
                                     lars_jax.sgd])
def test_integer_params_or_updates_are_refused(factory):
    params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2, jnp.int32)}  # the bias is unmasked
    tx = factory(0.1)
    with pytest.raises(ValueError, match=r"params.*\['b'\].*int32"):
        tx.init(params)
    good = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
    bad_updates = {"k": jnp.ones((3, 2), jnp.int32), "b": jnp.ones(2)}
    extra = {"per_example_norms": {"k": jnp.ones(2), "b": jnp.ones(2)}} \
        if factory is lars_jax.clars else {}
    with pytest.raises(ValueError, match=r"updates.*\['k'\]"):
        jax.jit(tx.update)(bad_updates, tx.init(good), good, **extra)


@pytest.mark.parametrize("factory", [lars_jax.lars, lars_jax.larc, lars_jax.clars])
def test_zero_trust_coefficient_is_refused(factory):
    with pytest.raises(ValueError, match="trust_coefficient"):
        factory(0.1, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        optax.inject_hyperparams(factory)(learning_rate=0.1, trust_coefficient=0.0).init(
            {"k": jnp.ones((2, 2))})


def test_clars_norms_of_different_lengths_or_complex_are_refused():
    params = {"k": jnp.ones((3, 2)), "v": jnp.ones((2, 2))}
    tx = lars_jax.clars(0.1, mask=True)
    with pytest.raises(ValueError, match=r"\['k'\] has 64.*\['v'\] has 10"):
        jax.jit(tx.update)(params, tx.init(params), params,
                           per_example_norms={"k": jnp.ones(64), "v": jnp.ones(10)})
    with pytest.raises(ValueError, match="real"):
        tx.update(params, tx.init(params), params,
                  per_example_norms={"k": jnp.ones(4, jnp.complex64), "v": jnp.ones(4)})


def test_negative_per_example_norm_gives_nan_not_ascent():
    """Before: mean(-3, 1) = -1 flipped the ratio's sign, a finite step uphill."""
    params = {"k": jnp.ones((2, 2))}
    grads = {"k": jnp.full((2, 2), 0.1)}
    tx = lars_jax.clars(0.1, trust_coefficient=1.0, momentum=0.0)
    u, state = jax.jit(tx.update)(grads, tx.init(params), params,
                                  per_example_norms={"k": jnp.array([-3.0, 1.0])})
    assert np.all(np.isnan(np.asarray(u["k"])))
    assert np.isnan(float(lars_jax.trust_ratio_stats(state)["trust_ratio"]["k"]))
    # A single slightly negative norm with a positive mean is refused the same way.
    u, _ = tx.update(grads, tx.init(params), params,
                     per_example_norms={"k": jnp.array([-1e-3, 1.0])})
    assert np.all(np.isnan(np.asarray(u["k"])))
