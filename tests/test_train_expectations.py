"""The trainer against expectations computed without it.

Each test runs the real trainer (`train(config, data=...)`, or the per-device step of
`make_train_step` under the jit path) and compares its result with a reference built
from the model, `jax.grad`/`jax.vmap` and NumPy: per-slice BatchNorm gradients, group
gradient norms, per-example norms, a hand-written smoothed cross-entropy, the padded last
evaluation batch, trust ratios from logged norms, the learning rate of every schedule.
Every test names in its docstring the plausible bug it catches.

Run as a script (``python tests/test_train_expectations.py WORKDIR EPOCHS``) it is the
training job that the SIGKILL test starts and kills.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _xla_env import xla_flags

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- helpers


def _data(n_train=64, n_test=70, num_classes=4, hw=6, seed=0):
    """uint8 images whose label is the brightest quarter of the image (learnable)."""
    from lars_jax.train.loop import Data

    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x = rng.integers(0, 256, (n, hw, hw, 1), dtype=np.uint8)
    h = hw // 2
    quads = np.stack([x[:, :h, :h].mean((1, 2, 3)), x[:, :h, h:].mean((1, 2, 3)),
                      x[:, h:, :h].mean((1, 2, 3)), x[:, h:, h:].mean((1, 2, 3))], 1)
    y = (np.argmax(quads, 1) % num_classes).astype(np.int32)
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes, 0.5, 0.25)


def _config(workdir, **kw):
    from lars_jax.train import TrainConfig

    base = dict(model="mlp1", width=1 / 16, norm="batch", batch_size=64, epochs=1.0,
                warmup_epochs=0.0, schedule="constant", lr_scaling="none",
                learning_rate=0.5, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                dtype="float32", num_devices=8, checkpoint_every_steps=-1, plot=False,
                progress=False, log_every_steps=1, eval_batch_size=32, workdir=str(workdir))
    base.update(kw)
    return TrainConfig(**base)


def _model(cfg, num_classes):
    """The config's model with per-call BatchNorm statistics (no cross-device axis)."""
    import jax.numpy as jnp

    from lars_jax.models import create_model

    return create_model(cfg.model, num_classes=num_classes, norm=cfg.norm, width=cfg.width,
                        dtype=jnp.float32)


def _initial_variables(cfg, data):
    """The trainer's documented initialisation: ``model.init`` with the rbg key of the
    seed on a zero batch of one example (a wrong guess fails the tests, never passes)."""
    import jax
    import jax.numpy as jnp

    model = _model(cfg, data.num_classes)
    shape = (1, *data.train_images.shape[1:])
    return jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(cfg.seed, impl="rbg"), jnp.zeros(shape, jnp.float32))


def _normalize(images, mean, std):
    return ((images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std))


def _train_batch(cfg, data, step):
    """Batch `step` as the trainer documents it: indices ``batch_indices(seed, step)``,
    no augmentation (the configs here have none), (x / 255 - mean) / std."""
    from lars_jax.data import batch_indices

    idx = np.asarray(batch_indices(cfg.seed, step, cfg.batch_size, len(data.train_labels)))
    return _normalize(data.train_images[idx], data.mean, data.std), data.train_labels[idx]


def _smoothed_cross_entropy(logits, labels, num_classes, smoothing):
    """Per-example -sum_c t_c log softmax(z)_c with t = (1 - s) onehot + s / C."""
    import jax
    import jax.numpy as jnp

    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    target = (1.0 - smoothing) * onehot + smoothing / num_classes
    return -jnp.sum(target * jax.nn.log_softmax(logits), -1)


def _group_step_reference(model, variables, x, y, groups, lr, smoothing, num_classes):
    """One SGD step (no momentum, no decay) on the batch split into `groups` contiguous
    groups, each with its own BatchNorm statistics: returns (params, batch_stats, loss).

    The gradient is the mean of the groups' gradients (equal sizes); the running
    statistics are the mean over groups of each group's updated statistics.
    """
    import jax
    import jax.numpy as jnp

    params, stats = variables["params"], variables["batch_stats"]

    def group_loss(p, xg, yg):
        logits, upd = model.apply({"params": p, "batch_stats": stats}, xg, train=True,
                                  mutable=["batch_stats"])
        loss = jnp.mean(_smoothed_cross_entropy(logits, yg, num_classes, smoothing))
        return loss, upd["batch_stats"]

    xs = x.reshape(groups, -1, *x.shape[1:])
    ys = y.reshape(groups, -1)
    (losses, new_stats), grads = jax.jit(jax.vmap(  # one program (eagerly: one per primitive)
        jax.value_and_grad(group_loss, has_aux=True), in_axes=(None, 0, 0)))(params, xs, ys)
    mean = lambda t: jax.tree.map(lambda v: np.asarray(v, np.float64).mean(0), t)
    g = mean(grads)
    new_params = jax.tree.map(lambda p, gg: np.asarray(p, np.float64) - lr * gg, params, g)
    return new_params, mean(new_stats), float(np.mean(np.asarray(losses, np.float64)))


def _assert_trees_close(got, want, atol, what):
    import jax

    got_l = jax.tree_util.tree_flatten_with_path(got)[0]
    want_l = jax.tree_util.tree_flatten_with_path(want)[0]
    assert [p for p, _ in got_l] == [p for p, _ in want_l], what
    for (path, a), (_, b) in zip(got_l, want_l, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=0, atol=atol, err_msg=f"{what} {path}")


def _rows(workdir, kind="train"):
    return [r for r in (json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open())
            if r["kind"] == kind]


# ------------------------------------------------- BatchNorm span, label smoothing, eval

BN_GROUPS = {"device": 8, "ghost": 16, "global": 1}  # groups of the 64-example batch
BN_SMOOTHING, BN_LR = 0.1, 0.5


def _bn_config(workdir, bn_span):
    return _config(workdir, bn_span=bn_span, bn_ghost_size=4, label_smoothing=BN_SMOOTHING,
                   learning_rate=BN_LR)


@functools.cache
def _bn_references():
    """``{span: (params, batch_stats, loss)}``: the reference step of every BN span (the
    model, initial variables and batch do not depend on the span: computed once for the
    three tests, each of which compares with all three)."""
    data = _data()
    cfg = _bn_config("unused", "device")
    model, init = _model(cfg, data.num_classes), _initial_variables(cfg, data)
    x, y = _train_batch(cfg, data, 0)
    return {span: _group_step_reference(model, init, x, y, g, BN_LR, BN_SMOOTHING,
                                        data.num_classes)
            for span, g in BN_GROUPS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("bn_span", ["device", "ghost", "global"])
def test_bn_span_label_smoothing_and_padded_eval_match_references(tmp_path, bn_span):
    """One real `train()` step on 8 devices (batch 64, label smoothing 0.1, SGD) equals a
    reference SGD step whose gradient is the mean of the gradients of the batch's
    contiguous groups, each normalised by its own statistics: 8 groups of 8 for
    bn_span="device", 16 ghosts of 4 for "ghost" (bn_ghost_size=4), the whole batch for
    "global". The logged loss is the hand-written smoothed cross-entropy, and the final
    test loss and accuracy over 70 test examples (eval batches 32, 32 and a padded 6)
    equal a NumPy evaluation of the returned parameters.

    Catches: a BN span that is ignored or mixed up (the three references differ by far
    more than the tolerance, checked below), per-device statistics without the
    cross-device gradient average (the old test's comparison), running statistics not
    averaged over devices, label smoothing dropped or applied twice, and an evaluation
    that averages batch means (the short last batch weighted like the others), counts
    the padding, or drops the last partial batch."""
    import jax

    from lars_jax.train import train_with_state

    data = _data()
    cfg = _bn_config(tmp_path, bn_span)
    summary, state = train_with_state(cfg, data=data)
    state = jax.device_get(state)
    assert summary["steps"] == 1

    model = _model(cfg, data.num_classes)
    refs = _bn_references()
    want_params, want_stats, want_loss = refs[bn_span]
    # the spans really lead to different parameters (so the comparison can tell them apart)
    for other, (p, _, _) in refs.items():
        if other != bn_span:
            diff = max(float(np.max(np.abs(a - b))) for a, b in
                       zip(jax.tree.leaves(p), jax.tree.leaves(want_params), strict=True))
            assert diff > 1e-3, (bn_span, other, diff)
    # the ghost model names its layer GhostBatchNorm_0; the reference is plain BatchNorm
    plain = lambda t: {k.replace("GhostBatchNorm", "BatchNorm"): v for k, v in t.items()}
    _assert_trees_close(plain(state.params), want_params, 1e-5, "params")
    _assert_trees_close(plain(state.batch_stats), want_stats, 1e-5, "batch_stats")
    (row,) = _rows(tmp_path)
    np.testing.assert_allclose(row["loss"], want_loss, rtol=1e-5)

    # evaluation of the returned state, in NumPy (float64 softmax cross-entropy)
    variables = {"params": plain(state.params), "batch_stats": plain(state.batch_stats)}
    logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(
        variables, _normalize(data.test_images, data.mean, data.std)), np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    labels = data.test_labels
    test_loss = float(np.mean(-logp[np.arange(len(labels)), labels]))
    test_acc = float(np.mean(np.argmax(logits, 1) == labels))
    np.testing.assert_allclose(summary["test_loss"], test_loss, rtol=1e-5)
    np.testing.assert_allclose(summary["test_accuracy"], test_acc, rtol=0, atol=1e-9)
    # the padded, masked last batch matters: the mean of the 3 batch means differs
    sizes = [32, 32, 6]
    ce = -logp[np.arange(len(labels)), labels]
    batch_means = [ce[i:i + s].mean() for i, s in zip(np.cumsum([0] + sizes[:-1]), sizes,
                                                      strict=True)]
    assert abs(np.mean(batch_means) - test_loss) > 1e-4 * test_loss



# ------------------------------------------------------------------- CLARS granularities


def _clars_reference(cfg, data, granularity):
    """One CLARS step computed with `lars_jax.clars` itself, fed norms computed here:
    per-example norms by `per_example_norms_vmap` (vmap of grad), or the norms of the
    gradients of contiguous groups (one per device, or per device and micro-batch) by
    vmap of grad over the reshaped batch. Returns (params, norms)."""
    import jax
    import jax.numpy as jnp
    import optax

    import lars_jax
    from lars_jax.per_example import per_example_norms_vmap

    model = _model(cfg, data.num_classes)
    params = _initial_variables(cfg, data)["params"]
    x, y = _train_batch(cfg, data, 0)

    def mean_loss(p, xb, yb):
        logits = model.apply({"params": p}, xb, train=True)
        return jnp.mean(_smoothed_cross_entropy(logits, yb, data.num_classes, 0.0))

    tx = lars_jax.clars(cfg.learning_rate, weight_decay=cfg.weight_decay,
                        trust_coefficient=cfg.trust_coefficient, momentum=cfg.momentum)

    @jax.jit  # one program (eagerly, every primitive compiles on its own)
    def step(params, x, y):
        grads = jax.grad(mean_loss)(params, x, y)
        if granularity == "example":
            norms = per_example_norms_vmap(
                lambda p, xi, yi: mean_loss(p, xi[None], yi[None]), params, x, y)
        else:
            groups = cfg.num_devices * (cfg.grad_accum_steps if granularity == "micro_batch"
                                        else 1)
            xs, ys = x.reshape(groups, -1, *x.shape[1:]), y.reshape(groups, -1)
            group_grads = jax.vmap(jax.grad(mean_loss), in_axes=(None, 0, 0))(params, xs, ys)
            norms = jax.tree.map(lambda g: jnp.sqrt(jnp.sum(g.reshape(groups, -1) ** 2, 1)),
                                 group_grads)
        updates, _ = tx.update(grads, tx.init(params), params, per_example_norms=norms)
        return optax.apply_updates(params, updates), norms

    return step(params, x, y)


def _clars_config(workdir, granularity, accum):
    return _config(workdir, optimizer="clars", clars_granularity=granularity,
                   grad_accum_steps=accum, norm="none", momentum=0.9, weight_decay=5e-4,
                   trust_coefficient=0.02, learning_rate=2.0)


@functools.cache
def _clars_reference_of(granularity, accum):
    """The parameters `_clars_reference` gives for the test's config (computed once per
    granularity: each test compares with all three)."""
    cfg = _clars_config("unused", granularity, accum)
    return _clars_reference(cfg, _data(), granularity)[0]


@pytest.mark.slow
@pytest.mark.parametrize("granularity,accum", [("example", 1), ("device", 1),
                                               ("micro_batch", 2)])
def test_clars_granularities_match_independent_norms(tmp_path, granularity, accum):
    """One real `train()` CLARS step (8 devices, batch 64, MLP without BatchNorm) equals
    `lars_jax.clars` fed norms computed independently: per-example (vmap of grad) for
    "example", one gradient norm per device's 8 examples for "device", one per
    micro-batch of 4 (8 devices x 2 accumulation steps) for "micro_batch".

    Catches: norms of another granularity than asked (the three references differ, as
    checked below), per-example norms of the 1/m-scaled loss, norms taken after the
    cross-device average (which would give LARS's ||g||), norms gathered from one device
    only, micro-batch norms of the accumulated sum."""
    import jax

    cfg = _clars_config(tmp_path, granularity, accum)
    from lars_jax.train import train_with_state

    _, state = train_with_state(cfg, data=_data())
    want = _clars_reference_of(granularity, accum)
    _assert_trees_close(jax.device_get(state.params), want, 1e-5, "params")
    # the references of the granularities really differ from each other
    for other, k in (("example", 1), ("device", 1), ("micro_batch", 2)):
        if other != granularity:
            alt = _clars_reference_of(other, k)
            diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                       zip(jax.tree.leaves(alt), jax.tree.leaves(want), strict=True))
            assert diff > 1e-4, (granularity, other, diff)


# --------------------------------------------------------------------- non-finite guard


def _tiny_net():
    import flax.linen as nn

    class TinyNet(nn.Module):
        """Conv -> BatchNorm (over the "data" axis) -> relu -> mean pool -> Dense."""

        @nn.compact
        def __call__(self, x, train=True):
            x = nn.Conv(4, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train, axis_name="data")(x)
            return nn.Dense(10)(nn.relu(x).mean((1, 2)))

    return TinyNet()


@functools.cache
def _step_runner(nan_policy, lr, batch=32, num_devices=2):
    """``run(steps) -> (state, metrics)``: `steps` steps from the initial state of the
    per-device train step on the jit path (compiled once); step s takes examples
    [s * batch, (s + 1) * batch) of a fixed float data set."""
    import jax
    import jax.numpy as jnp
    import optax

    from lars_jax.train import parallel as par
    from lars_jax.train.step import StepOptions, init_train_state, make_train_step

    rng = np.random.default_rng(0)
    images = rng.standard_normal((4 * batch, 6, 6, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 4 * batch).astype(np.int32)
    model = _tiny_net()
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
        jnp.zeros((1, 6, 6, 1)))
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9)
    init_state = init_train_state(variables["params"], variables["batch_stats"], tx)
    opts = StepOptions(num_classes=10, axis_name="data", num_devices=num_devices,
                       nan_policy=nan_policy)

    def prepare(imgs, labs, step):
        return (jax.lax.dynamic_slice_in_dim(imgs, step * batch, batch),
                jax.lax.dynamic_slice_in_dim(labs, step * batch, batch))

    mesh = par.make_mesh(num_devices)
    fn = par.jit_train_step(make_train_step(model, tx, opts), prepare, mesh)
    imgs = par.put_global(images, par.replicated(mesh))
    labs = par.put_global(labels, par.replicated(mesh))

    def run(steps):
        state = par.put_replicated(init_state, mesh)  # a fresh copy: the step donates it
        history = []
        for s in range(steps):
            state, m = fn(state, imgs, labs, np.int32(s))
            history.append(jax.device_get(m))
        return jax.device_get(state), history

    return run


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_step_leaves_the_state_of_the_last_good_step(policy):
    """A huge learning rate makes step 1 non-finite (and every later one, from the same
    parameters). The guard must leave params, BatchNorm statistics and the whole
    optimizer state (momentum buffer, step count) bitwise equal to a run that stopped
    before the bad step; "stop" freezes the step counter and records the step, "skip"
    counts the skipped steps and goes on.

    Catches: a guard that only checks finiteness of the result (e.g. resets the
    parameters to their initial values or zeroes them, which are finite too), that
    applies the bad step's BatchNorm statistics or optimizer state (momentum buffer or
    count advanced), or that records the wrong step."""
    import jax

    # 1e18: step 0's new parameters stay finite (their squared norm too, which the guard
    # also checks), step 1 is non-finite; measured for 1e16 to 1e19, so 1e18 sits two
    # decades inside that window (at 1e37 step 0 itself overflows the parameters' norm)
    lr = 1e18
    run = _step_runner(policy, lr)
    state, hist = run(4)
    bad = [i for i, m in enumerate(hist) if m["finite"] == 0]
    assert bad and bad[0] >= 1, "the test needs a good step, then a non-finite one"
    assert bad == list(range(bad[0], 4)), bad
    before, _ = run(bad[0])
    for field in ("params", "batch_stats", "opt_state"):
        got = jax.tree_util.tree_flatten_with_path(getattr(state, field))[0]
        want = jax.tree_util.tree_flatten_with_path(getattr(before, field))[0]
        assert len(got) == len(want) > 0
        for (path, a), (_, b) in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{field} {path}")  # bitwise
    if policy == "stop":
        assert int(state.nonfinite_step) == bad[0]
        assert int(state.step) == bad[0] and int(state.skipped) == 0
    else:
        assert int(state.nonfinite_step) == -1
        assert int(state.skipped) == len(bad) and int(state.step) == 4


# ------------------------------------------------------- learning rate and trust ratios


def _hand_rate(t, *, schedule, peak, start, warm, total, end):
    """The documented rule, written out: linear warmup from `start` to `peak` over `warm`
    steps, then the decay over the remaining ``total - warm`` steps (step: /10 at 50% and
    75% of them; onecycle: optax's cosine 1cycle with the warmup as its rising part)."""
    if schedule == "onecycle":
        lo = peak / 25.0
        if t < warm:
            return lo + (peak - lo) * (1 - math.cos(math.pi * t / warm)) / 2
        final = lo / 1e4
        frac = min((t - warm) / (total - warm), 1.0)
        return final + (peak - final) * (1 + math.cos(math.pi * frac)) / 2
    if t < warm:
        return start + (peak - start) * t / warm
    rest, u = total - warm, t - warm
    frac = min(u / rest, 1.0)
    if schedule == "cosine":
        return end + (peak - end) * (1 + math.cos(math.pi * frac)) / 2
    if schedule == "poly2":
        return end + (peak - end) * (1 - frac) ** 2
    if schedule == "linear":
        return peak + (end - peak) * frac
    if schedule == "step":
        return peak * (1.0 if u < rest // 2 else 0.1 if u < (3 * rest) // 4 else 0.01)
    if schedule == "constant":
        return peak
    raise AssertionError(schedule)


@pytest.mark.parametrize("schedule", ["poly2", "linear", "step", "onecycle", "constant",
                                      "cosine"])
@pytest.mark.parametrize("lr_scaling,warmup_start", [("linear", "zero"), ("sqrt", "base"),
                                                     ("none", "base")])
def test_learning_rate_schedule_matches_the_documented_rule(schedule, lr_scaling,
                                                            warmup_start):
    """The trainer's per-step rate for every --schedule, lr_scaling and warmup_start,
    against the rule written out by hand: peak = 0.4 x (2048 / 256) (linear), x sqrt(8)
    (sqrt) or x 1 (none); warmup over 1 epoch (10 steps) from 0 ("zero") or from the
    unscaled 0.4 ("base"), then the decay to end_learning_rate=0.01 over 90 steps.

    Catches: the scaling rules swapped or applied twice, warmup starting from the wrong
    value or lasting the wrong number of steps, the decay counted from step 0 instead
    of the end of warmup, a decay that misses end_learning_rate, step boundaries at 50%
    and 75% of the whole run instead of the post-warmup part, onecycle's peak misplaced."""
    from lars_jax.train import TrainConfig
    from lars_jax.train.build import learning_rate_schedule

    base, b, b0, spe, total, end = 0.4, 2048, 256, 10, 100, 0.01
    cfg = TrainConfig(learning_rate=base, batch_size=b, base_batch_size=b0,
                      lr_scaling=lr_scaling, warmup_epochs=1.0, warmup_start=warmup_start,
                      schedule=schedule, end_learning_rate=end, epochs=10.0)
    peak = {"linear": base * 8, "sqrt": base * math.sqrt(8), "none": base}[lr_scaling]
    start = 0.0 if warmup_start == "zero" else base
    sched = learning_rate_schedule(cfg, spe, total)
    steps = [0, 1, 5, 9, 10, 11, 30, 54, 55, 56, 76, 77, 78, 90, 99, 100]
    got = [float(sched(t)) for t in steps]
    want = [_hand_rate(t, schedule=schedule, peak=peak, start=start, warm=10, total=total,
                       end=end) for t in steps]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_logged_lr_and_trust_ratios_follow_from_logged_norms(tmp_path):
    """A real LARS run (2 devices, 8 steps, sqrt scaling, warmup from the base rate, then
    poly2): every logged row's lr is the hand-computed rate of its step, and each
    layer's logged trust ratio equals tc |w| / (|g| + wd |w|) from the logged weight and
    gradient norms of the same step (LARS paper form; biases and BN parameters excluded).

    Catches: logged norms of another step than the ratio's (e.g. the updated weights),
    the logged gradient norm of one device or before averaging, the ratio computed with
    the optax denominator |g + wd w| or without weight decay, and a logged lr that is the
    next step's or lacks the base learning rate factor."""
    from lars_jax.train import train

    tc, wd, base = 0.02, 5e-3, 0.3
    cfg = _config(tmp_path, optimizer="lars", batch_size=16, base_batch_size=4, epochs=2.0,
                  num_devices=2, learning_rate=base, lr_scaling="sqrt", warmup_epochs=0.5,
                  warmup_start="base", schedule="poly2", end_learning_rate=0.01,
                  momentum=0.9, weight_decay=wd, trust_coefficient=tc, log_layer_stats=True)
    data = _data()
    train(cfg, data=data)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))  # 64 / 16 = 4 steps per epoch
    peak = base * math.sqrt(16 / 4)
    want_lr = [_hand_rate(t, schedule="poly2", peak=peak, start=base, warm=2, total=8,
                          end=0.01) for t in range(8)]
    np.testing.assert_allclose([r["lr"] for r in rows], want_lr, rtol=1e-5)
    layers = sorted(k[len("trust_ratio/"):] for k in rows[0] if k.startswith("trust_ratio/"))
    assert layers == ["Dense_0/kernel", "head/kernel"]  # the masked (ndim > 1) tensors
    for r in rows:
        for layer in layers:
            w, g = r[f"weight_norm/{layer}"], r[f"grad_norm/{layer}"]
            assert w > 0 and g > 0
            np.testing.assert_allclose(r[f"trust_ratio/{layer}"], tc * w / (g + wd * w),
                                       rtol=1e-5, err_msg=f"step {r['step']} {layer}")


def test_mean_rows_means_the_listed_keys_and_keeps_the_last_of_the_rest():
    """`metrics.mean_rows` (the logged row of several steps): the mean of `mean_keys` over
    the rows that have them, the last row's value of every other key, inputs untouched.

    Catches: the mean taken over all rows with a missing key counted as 0 or the row
    count used as divisor, the first row's value kept instead of the last, a mean of the
    non-listed keys (the lr of a logged row must be its own step's), and mutation of the
    caller's rows."""
    from lars_jax.train.metrics import mean_rows

    rows = [
        {"loss": 1.0, "accuracy": 0.5, "finite": 1.0, "lr": 0.1, "step": 1},
        {"loss": np.float32(3.0), "accuracy": 0.25, "finite": 0.0, "lr": 0.2, "step": 2},
        {"loss": np.asarray(8.0), "finite": 1.0, "lr": 0.3, "step": 3, "grad_norm": 7.0},
    ]
    copies = [dict(r) for r in rows]
    out = mean_rows(rows, ("loss", "accuracy", "finite"))
    assert out == pytest.approx({"loss": 4.0, "accuracy": 0.375, "finite": 2 / 3, "lr": 0.3,
                                 "step": 3, "grad_norm": 7.0})
    assert all(isinstance(out[k], float) for k in ("loss", "accuracy", "finite"))
    assert rows == copies
    assert mean_rows(rows[:1], ("loss", "absent")) == rows[0]


# ---------------------------------------------------------------- SIGKILL, then resume


def _kill_job_config(workdir, epochs, checkpoint_every_steps=1):
    """LARS with momentum on a BatchNorm MLP, crop augmentation, a checkpoint per step:
    the state has params, BN statistics, a momentum buffer and trust-ratio state. The
    uninterrupted reference saves only its final checkpoint (a cosmetic field)."""
    return _config(workdir, optimizer="lars", momentum=0.9, weight_decay=5e-4,
                   trust_coefficient=0.02, batch_size=16, num_devices=2, epochs=float(epochs),
                   warmup_epochs=1.0, schedule="cosine", lr_scaling="linear",
                   base_batch_size=16, crop_padding=1, flip=True,
                   checkpoint_every_steps=checkpoint_every_steps, keep_checkpoints=2,
                   log_every_steps=1, eval_every_epochs=4.0)


def _kill_job(workdir: str, epochs: str, checkpoint_every_steps: int = 1) -> None:
    from lars_jax.train import train

    train(_kill_job_config(workdir, epochs, checkpoint_every_steps), data=_data())


def _start_job(workdir, epochs):
    env = dict(os.environ, XLA_FLAGS=xla_flags(2),
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, __file__, str(workdir), str(epochs)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _last_checkpoint_state(workdir):
    import jax
    import orbax.checkpoint as ocp

    ck = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    restored = ocp.StandardCheckpointer().restore(ck / str(last) / "state")
    return last, jax.tree_util.tree_flatten_with_path(restored)[0]


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_in_every_leaf(tmp_path):
    """A run killed with SIGKILL after a few checkpoints and restarted with the same
    command ends with a final checkpoint equal bit for bit, leaf by leaf (step, params,
    BatchNorm statistics, momentum buffer, trust-ratio state, counters), to an
    uninterrupted run; its final test loss and accuracy, and every logged training row
    (loss, accuracy, lr, norms), are the uninterrupted run's exactly.

    Catches: a resume that restores the parameters but not the BN statistics or the
    optimizer state (momentum restarted from zero, the schedule's count reset), data or
    augmentation that depend on the restart rather than on (seed, step), and metric rows
    duplicated or lost around the kill."""
    epochs = 8  # 4 steps per epoch: 32 steps, a checkpoint after each
    victim = _start_job(tmp_path / "victim", epochs)
    ck = tmp_path / "victim" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [int(p.name) for p in ck.iterdir() if p.name.isdigit()] if ck.exists() else []
        if steps and max(steps) >= 3:
            break
        assert victim.poll() is None, victim.stdout.read().decode()
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "victim" / "summary.json").exists(), "killed too late"
    killed_at = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    resumed = _start_job(tmp_path / "victim", epochs)
    # the uninterrupted run, here while the resumed one trains (one launch fewer): the same
    # 2-device program; it checkpoints only at its end
    _kill_job(str(tmp_path / "ref"), str(epochs), checkpoint_every_steps=0)
    out = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, out
    assert "resuming from step" in out

    s_ref, leaves_ref = _last_checkpoint_state(tmp_path / "ref")
    s_res, leaves_res = _last_checkpoint_state(tmp_path / "victim")
    assert s_ref == s_res == 32 and killed_at < 32
    assert [p for p, _ in leaves_ref] == [p for p, _ in leaves_res]
    names = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
             for p, _ in leaves_ref}
    for field in ("step", "params", "batch_stats", "opt_state", "skipped"):
        assert any(n.startswith(field) for n in names), (field, sorted(names)[:5])
    for (path, a), (_, b) in zip(leaves_ref, leaves_res, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))  # bitwise, every leaf

    sum_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    sum_res = json.loads((tmp_path / "victim" / "summary.json").read_text())
    assert sum_res["resumed_from_step"] is not None and sum_res["steps"] == 32
    for key in ("test_loss", "test_accuracy", "train_loss", "train_accuracy", "final_lr"):
        assert sum_res[key] == sum_ref[key], key
    drop = {"images_per_s"}
    rows_ref = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "ref")]
    rows_res = [{k: v for k, v in r.items() if k not in drop}
                for r in _rows(tmp_path / "victim")]
    assert [r["step"] for r in rows_res] == list(range(1, 33))
    assert rows_res == rows_ref
    assert _rows(tmp_path / "victim", "eval") == _rows(tmp_path / "ref", "eval")


if __name__ == "__main__":
    _kill_job(sys.argv[1], sys.argv[2])
