"""Loops of the train step compiled unrolled on the CPU (`StepOptions.unroll`,
`jit_train_steps(unroll=...)`, `unroll_loops`): same parameters as the rolled ``lax.scan``,
no ``while`` loop in the program, chosen only for convolutional models on the CPU."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax.train import parallel as par
from lars_jax.train.step import (
    StepOptions,
    has_convolution,
    init_train_state,
    make_train_step,
    unroll_loops,
)

B = 16
RNG = np.random.default_rng(1)
IMAGES = RNG.integers(0, 256, (4 * B, 6, 6, 1), dtype=np.uint8)
LABELS = RNG.integers(0, 10, 4 * B).astype(np.int32)


class TinyResNet(nn.Module):
    """Conv -> BatchNorm -> relu, plus a residual Conv -> BatchNorm, -> pool -> Dense."""

    @nn.compact
    def __call__(self, x, train=True):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        r = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
        return nn.Dense(10)(nn.relu(x + r).mean((1, 2)))


def _prepare(images, labels, step):
    """Batch `step` of the fixed data (no random bits: the program's only loop is ours)."""
    start = (step % (images.shape[0] // B)) * B
    x = jax.lax.dynamic_slice_in_dim(images, start, B).astype(jnp.float32) / 255.0 - 0.5
    return x, jax.lax.dynamic_slice_in_dim(labels, start, B)


@functools.cache
def _setup(accum, unroll):
    model = TinyResNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
    # CLARS with one gradient norm per micro-batch: the norms of every micro-batch are
    # stacked by the loop, so an unrolled loop that mixed them up would change the update
    tx = optax.inject_hyperparams(lars_jax.clars)(learning_rate=0.5, momentum=0.9,
                                                  trust_coefficient=0.02)
    state = init_train_state(variables["params"], variables["batch_stats"], tx)
    opts = StepOptions(num_classes=10, axis_name=par.AXIS, grad_accum_steps=accum,
                       clars_granularity="micro_batch", unroll=unroll)
    return make_train_step(model, tx, opts), state


def _train(accum, k, unroll):
    """Two calls of `k` steps (batches of B examples, cycling over 4) on one device."""
    step_fn, state = _setup(accum, unroll)
    mesh = par.make_mesh(1)
    fn = (par.jit_train_steps(step_fn, _prepare, mesh, k, unroll=unroll) if k > 1
          else par.jit_train_step(step_fn, _prepare, mesh))
    state = par.put_replicated(state, mesh)
    images, labels = jnp.asarray(IMAGES), jnp.asarray(LABELS)
    states = []
    for call in range(2):
        state, _ = fn(state, images, labels, np.int32(call * k))
        states.append(jax.device_get(state))
    return states


@pytest.mark.parametrize("accum,k", [(1, 4), (4, 1), (2, 4)])
def test_unrolled_loops_give_the_rolled_parameters(accum, k):
    """Unrolled and rolled micro-batch and step loops give the same parameters, BatchNorm
    statistics and optimizer state after 2 calls, within float32 rounding, not bitwise: XLA
    fuses and orders the straight-line program's reductions differently (observed largest
    difference 3e-7 absolute for parameters of size ~0.1-1), never by a misplaced
    micro-batch or step (which would move them by more than 1e-2: asserted below)."""
    (half, rolled), (_, unrolled) = _train(accum, k, False), _train(accum, k, True)
    assert int(rolled.step) == int(unrolled.step) == 2 * k
    for a, b in zip(jax.tree.leaves((rolled.params, rolled.batch_stats, rolled.opt_state)),
                    jax.tree.leaves((unrolled.params, unrolled.batch_stats,
                                     unrolled.opt_state)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    # the tolerance is far below what the steps change: the first call's parameters differ
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(half.params), jax.tree.leaves(rolled.params), strict=True)) > 1e-2


def test_unrolled_program_has_no_while_loop():
    """The multi-step call with accumulation lowers to a program without a ``while`` loop
    when unrolled (straight-line code, which XLA does not roll back), and the rolled one has
    two (so the check can fail)."""
    mesh = par.make_mesh(1)
    args = (par.put_replicated(_setup(2, True)[1], mesh), IMAGES, LABELS, np.int32(0))
    counts = {}
    for unroll in (False, True):
        fn = par.jit_train_steps(_setup(2, unroll)[0], _prepare, mesh, 2, unroll=unroll)
        counts[unroll] = fn.lower(*args).as_text().count("stablehlo.while")
    assert counts == {False: 2, True: 0}  # rolled: the step loop and the micro-batch loop


def test_unroll_chosen_for_convolutions_on_the_cpu_only():
    """`unroll_loops`: CPU and a convolution; GPU/TPU stay rolled, as do MLPs."""
    conv = TinyResNet()
    variables = conv.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
    x = jax.ShapeDtypeStruct((1, 6, 6, 1), jnp.float32)
    fwd = functools.partial(conv.apply, train=False)
    assert has_convolution(fwd, variables, x)
    mlp = nn.Dense(3)
    assert not has_convolution(mlp.apply, mlp.init(jax.random.key(0), jnp.zeros((1, 5))),
                               jax.ShapeDtypeStruct((1, 5), jnp.float32))
    assert unroll_loops("cpu", True)
    assert not unroll_loops("gpu", True) and not unroll_loops("tpu", True)
    assert not unroll_loops("cpu", False)


def test_the_trainer_unrolls_a_resnet_and_keeps_an_mlp_rolled(tmp_path):
    """`build` on the CPU: a ResNet's accumulation adds no ``while`` loop to the program
    (the batch preparation's random bits have their own loops, the same with and without
    accumulation); an MLP's accumulation stays one rolled loop."""
    from _train_jobs import tiny_config, tiny_data

    from lars_jax.train import build

    def whiles(model, accum):
        run = build(tiny_config(tmp_path, model=model, num_devices=1, grad_accum_steps=accum),
                    tiny_data())
        lowered = run.train_step.lower(run.state, run.images, run.labels, np.int32(0))
        return lowered.as_text().count("stablehlo.while")

    assert whiles("resnet8", 2) == whiles("resnet8", 1)
    assert whiles("mlp1", 2) == whiles("mlp1", 1) + 1
