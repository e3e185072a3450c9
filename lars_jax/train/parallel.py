"""Data parallelism: the same per-device step under ``jax.jit`` + ``jax.shard_map`` or ``jax.pmap``.

* jit path (`jit_train_step`): a `jax.sharding.Mesh` with one axis ``"data"``; the global
  batch (and the index vector that selects it) is sharded along ``"data"``, parameters and
  optimizer state are replicated. Batch selection and augmentation run on the global batch
  inside the same compiled program (XLA partitions them), then ``jax.shard_map`` runs the
  per-device step, whose collectives (gradient ``pmean``, cross-device BatchNorm, CLARS
  norm gathering, noise-scale statistics) use the ``"data"`` axis. Works unchanged across
  processes (multi-host): the mesh spans all global devices and every process feeds its own
  devices' shards.
* pmap path (`pmap_train_step`): ``jax.pmap(step, axis_name="data")`` over replicated state
  (leading device axis); the global batch is prepared by a small jitted function and
  reshaped to ``(devices, B / devices, ...)``. Across processes, each process passes the
  rows of its own devices (the leading axis of its state and batch runs over its local
  devices), as in the Flax ImageNet example.

Both paths augment the *global* batch with a key that depends only on ``(seed, step)``, so
a run on 1, 2 or 8 devices sees exactly the same examples.

References:
  JAX documentation, "Distributed arrays and automatic parallelization" and
  "Manual parallelism with shard_map".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"

PrepareFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def make_mesh(num_devices: int | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first `num_devices` (global) devices."""
    devs = list(devices) if devices is not None else jax.devices()
    if num_devices is not None:
        if num_devices > len(devs):
            raise ValueError(f"num_devices={num_devices} but only {len(devs)} devices exist")
        devs = devs[:num_devices]
    return Mesh(np.asarray(devs), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full (multi-host safe)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Replicates a pytree (host or device arrays, identical on all processes) over the mesh."""
    sh = replicated(mesh)
    return jax.tree.map(lambda v: put_global(np.asarray(jax.device_get(v)), sh), tree)


def jit_train_step(
    step_fn: Callable[..., Any],
    prepare: PrepareFn,
    mesh: Mesh,
) -> Callable[..., Any]:
    """Compiles ``(state, images, labels, step) -> (state, metrics)`` for the jit path.

    Args:
      step_fn: the per-device step from `make_train_step` with ``axis_name="data"``.
      prepare: ``prepare(images, labels, step) -> (x, y)`` selecting, augmenting and
        normalising the global batch of `step` (a pure JAX function, see `make_prepare`).
      mesh: the data mesh.

    Returns:
      A jitted function; ``state`` is donated.
    """
    return jax.jit(_sharded_step(step_fn, prepare, mesh), donate_argnums=0)


def _sharded_step(step_fn: Callable[..., Any], prepare: PrepareFn, mesh: Mesh
                  ) -> Callable[..., Any]:
    """The un-jitted ``(state, images, labels, step) -> (state, metrics)`` of the jit path."""
    # check_vma=False: the step averages its per-device gradients itself (lax.pmean), exactly
    # as under pmap. With varying-axis checking on, jax.grad with respect to the replicated
    # parameters would already psum the gradients over devices.
    sm = jax.shard_map(
        step_fn, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(), P()),
        check_vma=False)
    sharded = batch_sharded(mesh)

    def run(state, images, labels, step):
        x, y = prepare(images, labels, step)
        x = jax.lax.with_sharding_constraint(x, sharded)
        y = jax.lax.with_sharding_constraint(y, sharded)
        return sm(state, x, y)

    return run


def jit_train_steps(
    step_fn: Callable[..., Any],
    prepare: PrepareFn,
    mesh: Mesh,
    num_steps: int,
    unroll: bool = False,
) -> Callable[..., Any]:
    """`jit_train_step` for ``num_steps`` consecutive steps in one compiled call.

    ``(state, images, labels, step) -> (state, metrics)`` runs steps ``step, ...,
    step + num_steps - 1`` under ``jax.lax.scan``; every metric gets a leading axis of
    length ``num_steps``. The result equals ``num_steps`` calls of `jit_train_step` (same
    batches, same updates) with one dispatch instead of ``num_steps``, which matters when a
    step is short (small models and batches, fast accelerators).

    With ``unroll=True`` the scan compiles fully unrolled (``num_steps`` copies of the
    step, no ``while`` loop; compile time grows with ``num_steps``): the trainer sets it
    for convolutional models on the CPU (`lars_jax.train.step.unroll_loops`).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    run_one = _sharded_step(step_fn, prepare, mesh)

    def run(state, images, labels, step):
        def body(carry, i):
            return run_one(carry, images, labels, step + i)

        return jax.lax.scan(body, state, np.arange(num_steps, dtype=np.int32), unroll=unroll)

    return jax.jit(run, donate_argnums=0)


def pmap_train_step(
    step_fn: Callable[..., Any],
    prepare: PrepareFn,
    devices: Sequence[Any],
) -> Callable[..., Any]:
    """The pmap path: ``(replicated_state, images, labels, step) -> (state, metrics)``.

    ``state`` carries a leading device axis (see `replicate` / `unreplicate`); the metrics
    returned are those of device 0 (they are identical on all devices).
    """
    n = len(devices)
    pstep = jax.pmap(step_fn, axis_name=AXIS, devices=devices, donate_argnums=0)

    split = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))

    @functools.partial(jax.jit, out_shardings=(split, split))
    def prep(images, labels, step):
        x, y = prepare(images, labels, step)
        return x.reshape(n, -1, *x.shape[1:]), y.reshape(n, -1, *y.shape[1:])

    def run(state, images, labels, step):
        x, y = prep(images, labels, step)
        state, metrics = pstep(state, _process_local(x), _process_local(y))
        return state, unreplicate(metrics)

    return run


def _process_local(x: jax.Array) -> jax.Array:
    """The rows of a device-stacked global array that this process's devices hold.

    Multi-process ``pmap`` takes, on each process, arrays whose leading axis runs over that
    process's devices only (in mesh order); with one process this is `x` itself.
    """
    if x.is_fully_addressable:
        return x
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    local = [s.device for s in shards]
    sharding = NamedSharding(Mesh(np.asarray(local), (AXIS,)), P(AXIS))
    return jax.make_array_from_single_device_arrays(
        (len(shards), *x.shape[1:]), sharding, [s.data for s in shards])


def replicate(tree: Any, devices: Sequence[Any]) -> Any:
    """Adds a leading device axis for the pmap path (one copy per device)."""
    devices = list(devices)
    sh = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
    n = len(devices)
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), sh), tree)


def unreplicate(tree: Any) -> Any:
    """Removes the leading device axis (takes this process's first device's copy).

    Reads that copy on its own device: indexing (``x[0]``) a pmap result of a multi-process
    run would compile a program that spans the processes, one more cross-process
    rendezvous, at a time the processes need not reach together.
    """
    def first(x: jax.Array) -> jax.Array:
        return x.addressable_shards[0].data.reshape(x.shape[1:])

    return jax.tree.map(first, tree)


def make_prepare(
    *,
    seed: int,
    batch_size: int,
    mean: Any,
    std: Any,
    dtype: Any,
    augment: dict[str, Any] | None = None,
) -> PrepareFn:
    """``prepare(images_uint8, labels, step) -> (x, y)``: the global batch of `step`.

    `lars_jax.data.device_batch`: example indices from ``batch_indices(seed, step)`` (a
    fresh permutation each epoch), augmentation keyed by ``(seed, step)``, normalisation to
    `dtype`. The batch of a step therefore depends only on ``(seed, step)``.

    Args:
      seed: data seed.
      batch_size: global batch size.
      mean: per-channel mean on the [0, 1] scale.
      std: per-channel standard deviation on the [0, 1] scale.
      dtype: compute dtype of the returned images.
      augment: keyword arguments of `lars_jax.data.augment_batch` (None: no augmentation).
    """
    from lars_jax.data import device_batch

    mean = tuple(float(m) for m in np.atleast_1d(mean))
    std = tuple(float(s) for s in np.atleast_1d(std))

    def prepare(images, labels, step):
        return device_batch(images, labels, step, seed=seed, batch_size=batch_size, mean=mean,
                            std=std, augment=augment, dtype=dtype)

    return prepare
