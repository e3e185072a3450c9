"""Everything a run needs before its first step: `build(config, data) -> Run`.

`build` validates the config, loads the data (unless given), places it on the devices and
makes the model, the learning-rate function, the optimizer, the initial state, the
compiled train step(s) and the evaluation function. The trainer's loop
(`lars_jax.train.loop.train`) and the benchmarks use it, so a benchmark times exactly the
trainer's step.

Learning-rate rule: ``peak = learning_rate * scale(batch_size / base_batch_size)`` with
``scale`` linear, sqrt or none; a gradual warmup over ``warmup_epochs`` from
``learning_rate`` (``warmup_start="base"``, Goyal et al.) or from 0 (``"zero"``) to
``peak``; then the decay schedule over the remaining steps (`SCHEDULES`, a table of
factories: an unknown name raises). For ``schedule="onecycle"`` the 1cycle schedule spans
the whole run and ``warmup_epochs / epochs`` is its rising fraction; ``"mlperf"`` is
`lars_jax.mlperf_lars_schedule` (linear warmup from 0, then poly2 to ``end_learning_rate``).
In MLPerf mode (``TrainConfig.mlperf``) the mlperf schedule decays over
``total - warmup + 1`` steps, as the MLPerf references (`lars_jax.mlperf_decay_steps`).
cosine, poly2, linear and mlperf end at ``end_learning_rate``; constant, step and onecycle
have fixed ends (the peak, peak/100 and peak/250000), and `TrainConfig.validate` refuses an
``end_learning_rate`` with them. The optimizer is wrapped in ``optax.inject_hyperparams``,
so the rate of every step is in the optimizer state and in the logged ``lr``; the base
learning rate and the weight decay are arrays there, not constants of the compiled step, so
an lr or weight-decay grid compiles once per shape of run.

References:
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
  (arXiv 1706.02677).
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017
  (arXiv 1708.03888).
  MLPerf Training ResNet-50 LARS reference (mlcommons/training_results_v0.7).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lars_jax import alias, schedules
from lars_jax.data import dataset_info, load_split, normalize
from lars_jax.masks import default_mask
from lars_jax.models import create_model
from lars_jax.runs.errors import ConfigError
from lars_jax.train import parallel
from lars_jax.train.config import TrainConfig, peak_learning_rate
from lars_jax.train.step import (
    StepOptions,
    TrainState,
    cross_entropy,
    has_convolution,
    init_train_state,
    make_train_step,
    unroll_loops,
)


class Data(NamedTuple):
    """An in-memory data set: uint8 NHWC images and int32 labels, plus normalisation."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: Any
    std: Any


def load_data(config: TrainConfig) -> Data:
    """Loads the train and test splits into memory (first N examples with *_subset)."""
    info = dataset_info(config.dataset)
    if not info.fits_on_device:
        raise ValueError(
            f"TrainConfig.dataset={config.dataset!r}: does not fit in device memory; "
            "stream it with input_pipeline='host' or 'auto'")
    x_train, y_train = load_split(config.dataset, "train", data_dir=config.data_dir)
    x_test, y_test = load_split(config.dataset, info.test_split, data_dir=config.data_dir)
    if config.train_subset:
        x_train, y_train = x_train[: config.train_subset], y_train[: config.train_subset]
    if config.test_subset:
        x_test, y_test = x_test[: config.test_subset], y_test[: config.test_subset]
    return Data(np.asarray(x_train), np.asarray(y_train, np.int32), np.asarray(x_test),
                np.asarray(y_test, np.int32), info.num_classes, info.mean, info.std)


def steps_per_epoch(config: TrainConfig, num_train: int) -> int:
    """Optimizer steps per epoch (the last partial batch of an epoch is dropped)."""
    return config.run_steps(num_train)[0]


# ----------------------------------------------------------------------------- schedule


class _Decay(NamedTuple):
    """What a decay factory gets: the peak and end rates and the steps after warmup."""

    peak: float
    end: float
    steps: int


SCHEDULES: dict[str, Callable[[_Decay], optax.Schedule]] = {
    "cosine": lambda d: optax.cosine_decay_schedule(
        d.peak, d.steps, alpha=d.end / d.peak if d.peak else 0.0),
    "poly2": lambda d: optax.polynomial_schedule(d.peak, d.end, 2, d.steps),
    "linear": lambda d: optax.linear_schedule(d.peak, d.end, d.steps),
    "constant": lambda d: optax.constant_schedule(d.peak),
    "step": lambda d: optax.piecewise_constant_schedule(
        d.peak, {int(d.steps * 0.5): 0.1, int(d.steps * 0.75): 0.1}),
}
"""Decay after a gradual warmup, by `TrainConfig.schedule` name ("onecycle" and "mlperf"
contain their own warmup and are made in `learning_rate_schedule`)."""


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int, total_steps: int
                           ) -> optax.Schedule:
    """The per-step learning rate of `config` (scaling, warmup, decay; module docstring).

    Raises:
      ValueError: ``config.schedule`` names no schedule.
    """
    peak, end = peak_learning_rate(config), config.end_learning_rate
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total_steps)
    if config.schedule == "onecycle":
        pct = warmup / total_steps if warmup else 0.3
        return schedules.onecycle(total_steps, peak, pct_start=min(max(pct, 1e-3), 0.999))
    if config.schedule == "mlperf":
        warmup = min(warmup, total_steps - 1)
        decay = schedules.mlperf_decay_steps(total_steps, warmup) if config.mlperf else None
        return schedules.mlperf_lars_schedule(peak, warmup, total_steps, end_lr=end,
                                              decay_steps=decay)
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"TrainConfig.schedule={config.schedule!r}: must be one of "
                         f"{', '.join([*SCHEDULES, 'onecycle', 'mlperf'])}")
    decay = SCHEDULES[config.schedule](_Decay(peak, end, max(total_steps - warmup, 1)))
    start = 0.0 if config.warmup_start == "zero" else min(config.learning_rate, peak)
    return schedules.gradual_warmup(start, peak, warmup, decay)


def learning_rate_shape(config: TrainConfig, steps_per_epoch: int, total_steps: int
                        ) -> optax.Schedule:
    """The schedule of `config` divided by ``config.learning_rate`` (its value at lr 1).

    Every rule of :func:`learning_rate_schedule` is linear in ``learning_rate`` and
    ``end_learning_rate``, so ``schedule(t) == learning_rate * shape(t)``. The trainer keeps
    ``learning_rate`` as a number in the optimizer state and only ``shape`` in the compiled
    program: runs that differ only in the learning rate (the lr grids of a sweep) share one
    compiled step, reused from JAX's compilation cache.
    """
    lr = config.learning_rate
    unit = dataclasses.replace(config, learning_rate=1.0,
                               end_learning_rate=config.end_learning_rate / lr if lr else 0.0)
    return learning_rate_schedule(unit, steps_per_epoch, total_steps)


LrFn = Callable[[Any], jax.Array]
"""``lr_fn(opt_state) -> the learning rate the last update used``."""


def make_optimizer(config: TrainConfig, steps_per_epoch: int, total_steps: int
                   ) -> tuple[optax.GradientTransformation, LrFn]:
    """The config's optimizer and the function that reads its current rate from its state.

    The rate of step ``t`` is ``base_learning_rate * lr_shape(t)``: ``lr_shape`` (from
    :func:`learning_rate_shape`) is a function of the step count and ``base_learning_rate``
    (``config.learning_rate``) and ``weight_decay`` are arrays in the optimizer state
    (``opt_state.hyperparams``), so they are not compiled into the train step.
    """
    common = dict(momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer != "sgd":
        # mask: the default mask in both forms (lars's optax form alone means every tensor).
        common.update(trust_coefficient=config.trust_coefficient,
                      denominator=config.denominator, mask=default_mask)
        if config.optimizer in ("lars", "clars") and config.clip:
            common["clip"] = 1.0
    factory = {"sgd": alias.sgd, "lars": alias.lars, "larc": alias.larc,
               "clars": alias.clars}[config.optimizer]

    def scaled(lr_shape, base_learning_rate, weight_decay):
        return factory(learning_rate=base_learning_rate * lr_shape, weight_decay=weight_decay,
                       **common)

    tx = optax.inject_hyperparams(scaled)(
        lr_shape=learning_rate_shape(config, steps_per_epoch, total_steps),
        base_learning_rate=config.learning_rate, weight_decay=config.weight_decay)

    def lr_fn(opt_state: Any) -> jax.Array:
        hp = opt_state.hyperparams
        return jnp.asarray(hp["base_learning_rate"] * hp["lr_shape"], jnp.float32)

    return tx, lr_fn


# ----------------------------------------------------------------------------- model


def compute_dtype(config: TrainConfig) -> Any:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def build_model(config: TrainConfig, num_classes: int, *, axis_name: str | None) -> nn.Module:
    """The config's model; BatchNorm reduces over `axis_name` when ``bn_span="global"``."""
    bn_axis = axis_name if config.bn_span == "global" and config.norm == "batch" else None
    ghost = config.bn_ghost_size if config.bn_span == "ghost" else None
    return create_model(
        config.model, num_classes=num_classes, norm=config.norm, bn_axis_name=bn_axis,
        bn_ghost_size=ghost, width=config.width, dtype=compute_dtype(config),
        zero_init_last_bn=config.zero_init_last_bn)


def init_variables(model: nn.Module, seed: int, shape: tuple[int, ...], dtype: Any) -> Any:
    """The model's initial variables, identical on every process.

    Uses the "rbg" PRNG for initialisation only: XLA's CPU compiler takes minutes on the
    threefry bits of a ResNet's initialisers and seconds on rbg. In multi-process runs
    process 0's values are broadcast, so all replicas start equal whatever the backend.
    """
    key = jax.random.key(seed, impl="rbg")
    variables = jax.jit(functools.partial(model.init, train=False))(key, jnp.zeros(shape, dtype))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        variables = multihost_utils.broadcast_one_to_all(variables)
    return variables


# ----------------------------------------------------------------------------- evaluation


def make_eval_fn(model: nn.Module, mesh: Any, num_classes: int, mean: Any, std: Any,
                 dtype: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``eval_fn(variables, images_u8, labels, mask) -> (loss_sum, correct_sum)`` (jitted)."""
    mean = tuple(float(m) for m in np.atleast_1d(mean))
    std = tuple(float(s) for s in np.atleast_1d(std))
    sharded = parallel.batch_sharded(mesh)

    @jax.jit
    def eval_fn(variables, images, labels, mask):
        images = jax.lax.with_sharding_constraint(images, sharded)
        logits = model.apply(variables, normalize(images, mean, std, dtype), train=False)
        loss = cross_entropy(logits, labels, num_classes)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.sum(loss * mask), jnp.sum(correct * mask)

    return eval_fn


def eval_batches(data: Data, batch: int, mesh: Any) -> list[tuple[Any, Any, Any, int]]:
    """The test set in padded batches on the mesh: ``(images, labels, mask, count)``."""
    sharded = parallel.batch_sharded(mesh)
    out = []
    for start in range(0, len(data.test_labels), batch):
        x = data.test_images[start:start + batch]
        y = data.test_labels[start:start + batch]
        count = len(y)
        mask = np.ones(batch, np.float32)
        if count < batch:
            x = np.concatenate([x, np.zeros((batch - count, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(batch - count, y.dtype)])
            mask[count:] = 0
        out.append(tuple(parallel.put_global(a, sharded) for a in (x, y, mask)) + (count,))
    return out


# ----------------------------------------------------------------------------- build


class Run(NamedTuple):
    """A built run: what `train` steps through, and what the benchmarks time.

    Attributes:
      config: the validated config.
      data: the in-memory data set.
      num_devices: devices of the data-parallel mesh.
      steps_per_epoch: optimizer steps per epoch.
      total_steps: steps of the whole run.
      mesh: the ``"data"`` mesh.
      model: the training model (cross-device BatchNorm over ``"data"`` when asked).
      tx: the optimizer.
      lr_schedule: the learning rate of each step (for the summary's ``peak_lr``).
      state: the initial `TrainState`, replicated over the mesh (the layout of checkpoints;
        `place` turns it into the layout of `train_step`).
      train_step: ``(state, images, labels, step) -> (state, metrics)``, compiled.
      train_steps: the same for ``config.steps_per_call`` steps per call (None: 1).
      place: the global state -> the layout `train_step` takes (identity for jit).
      unplace: the inverse of `place`.
      images: the training images on the devices (uint8, replicated).
      labels: the training labels on the devices.
      eval_fn: see `make_eval_fn`.
      test_batches: see `eval_batches` (streamed batches with a host input).
      input: the host-streaming input (`lars_jax.train.input_pipeline.StreamingInput`;
        None: the data set is on the devices, in ``images`` and ``labels``).
    """

    config: TrainConfig
    data: Data | None
    num_devices: int
    steps_per_epoch: int
    total_steps: int
    mesh: Any
    model: nn.Module
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    state: TrainState
    train_step: Callable[..., tuple[TrainState, dict[str, Any]]]
    train_steps: Callable[..., tuple[TrainState, dict[str, Any]]] | None
    place: Callable[[TrainState], TrainState]
    unplace: Callable[[TrainState], TrainState]
    images: jax.Array
    labels: jax.Array
    eval_fn: Callable[..., tuple[jax.Array, jax.Array]]
    test_batches: Any
    input: Any = None

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """The training input of `step`: the streamed batch (host input), or the data set
        on the devices (the compiled step draws the step's batch from it)."""
        if self.input is not None:
            return self.input.batch(step)
        return self.images, self.labels

    def advance(self, state: TrainState, step: int, stop: int
                ) -> tuple[TrainState, dict[str, Any], int]:
        """Runs the steps from `step` on, never past `stop`: ``steps_per_call`` steps in one
        call where they fit, else one. Returns ``(state, metrics, steps run)`` (metrics
        stacked over the steps of a multi-step call)."""
        k = self.config.steps_per_call
        multi = self.train_steps is not None and step + k <= stop
        images, labels = self.batch(step)
        state, metrics = (self.train_steps if multi else self.train_step)(
            state, images, labels, np.int32(step))
        return state, metrics, k if multi else 1

    def close(self) -> None:
        """Stops the host input's reader thread (nothing to do for in-memory data)."""
        if self.input is not None:
            self.input.close()


def build(config: TrainConfig, data: Data | None = None, *, noise_scale: bool = False) -> Run:
    """Validates `config` and builds its run (`data`: instead of ``config.dataset``).

    With ``noise_scale`` the step also returns the one-batch gradient-noise-scale estimates
    from every example's gradient norm (`StepOptions.log_noise_scale`; ``lars-jax advise``).

    Raises:
      ConfigError: a bad config (a ValueError), naming the field, before any compute.
    """
    num_devices = config.num_devices or jax.device_count()
    config.validate(device_count=num_devices)  # nothing again after the command line's
    _check_pmap_devices(config, num_devices)
    mesh = parallel.make_mesh(num_devices)
    stream = _host_input(config, mesh) if data is None else None  # host streaming
    data = load_data(config) if data is None and stream is None else data
    num_train = stream.num_train if stream else len(data.train_labels)
    _check_num_train(config, num_devices, num_train, streamed=stream is not None)
    epoch_steps, total_steps = config.run_steps(num_train)

    dtype = compute_dtype(config)
    meta = stream or data  # num_classes, mean, std
    model = build_model(config, meta.num_classes, axis_name=parallel.AXIS)
    eval_model = build_model(config, meta.num_classes, axis_name=None)
    example_shape = stream.image_shape if stream else data.train_images.shape[1:]
    variables = init_variables(eval_model, config.seed, (1, *example_shape), dtype)
    tx, lr_fn = make_optimizer(config, epoch_steps, total_steps)
    state = jax.jit(init_train_state, static_argnums=2)(
        variables["params"], variables.get("batch_stats", {}), tx)
    state = parallel.put_replicated(state, mesh)

    unroll = _unroll(config, mesh, eval_model, variables,
                     jax.ShapeDtypeStruct((1, *example_shape), dtype))
    options = _step_options(config, meta.num_classes, num_devices, total_steps,
                            noise_scale=noise_scale, unroll=unroll)
    step_fn = make_train_step(model, tx, options, lr_fn=lr_fn)
    prepare = _prepare(config, meta, dtype, streamed=stream is not None)
    train_step, train_steps, place, unplace = _compiled_steps(config, step_fn, prepare, mesh,
                                                              unroll=unroll)

    replicated = parallel.replicated(mesh)
    num_test = stream.num_test if stream else len(data.test_labels)
    eval_batch = max(num_devices, (min(config.eval_batch_size, num_test)
                                   // num_devices) * num_devices)
    return Run(
        config=config, data=data, num_devices=num_devices, steps_per_epoch=epoch_steps,
        total_steps=total_steps, mesh=mesh, model=model, tx=tx,
        lr_schedule=learning_rate_schedule(config, epoch_steps, total_steps), state=state,
        train_step=train_step, train_steps=train_steps, place=place, unplace=unplace,
        images=None if stream else parallel.put_global(data.train_images, replicated),
        labels=None if stream else parallel.put_global(data.train_labels, replicated),
        eval_fn=make_eval_fn(eval_model, mesh, meta.num_classes, meta.mean, meta.std, dtype),
        test_batches=(stream.test_batches(eval_batch) if stream
                      else eval_batches(data, eval_batch, mesh)),
        input=stream)


def _check_pmap_devices(config: TrainConfig, num_devices: int) -> None:
    """Refuses a device count the pmap path cannot run on (the jit path takes any)."""
    if (config.parallel == "pmap" and jax.process_count() > 1
            and num_devices != jax.device_count()):
        raise ConfigError(f"TrainConfig.num_devices={num_devices}: multi-process pmap runs on "
                          f"all {jax.device_count()} devices (leave num_devices unset)")
    if (config.parallel == "pmap" and jax.process_count() == 1
            and num_devices > jax.local_device_count()):
        raise ConfigError(f"TrainConfig.num_devices={num_devices}: pmap uses local devices only "
                          f"({jax.local_device_count()})")


def _check_num_train(config: TrainConfig, num_devices: int, num_train: int, *,
                     streamed: bool) -> None:
    """Refuses a config that does not fit the `num_train` training examples it got."""
    if num_train < config.batch_size:
        raise ConfigError(f"TrainConfig.batch_size={config.batch_size}: larger than the "
                          f"{num_train} training examples")
    if num_train != config.num_train_examples():  # custom data: the step checks again
        config.validate(device_count=num_devices, num_train=num_train)
    if config.mlperf and not streamed:
        raise ConfigError("TrainConfig.mlperf=True: MLPerf mode keeps the remainder batch of "
                          "the host input only (an in-memory data set was given)")


def _step_options(config: TrainConfig, num_classes: int, num_devices: int, total_steps: int,
                  *, noise_scale: bool, unroll: bool) -> StepOptions:
    """The train step's static options for `config` (over the mesh's ``"data"`` axis)."""
    return StepOptions(
        num_classes=num_classes, axis_name=parallel.AXIS, num_devices=num_devices,
        grad_accum_steps=config.grad_accum_steps, label_smoothing=config.label_smoothing,
        sync_batch_stats=config.bn_span != "global",
        clars_granularity=config.clars_granularity if config.optimizer == "clars" else None,
        nan_policy=config.nan_policy,
        max_skipped=math.floor(config.max_skipped_fraction * total_steps),
        log_layer_stats=config.log_layer_stats,
        log_diagnostics=config.log_diagnostics, weight_decay=config.weight_decay,
        momentum=config.momentum, log_noise_scale=noise_scale, masked=config.mlperf,
        unroll=unroll)


def _prepare(config: TrainConfig, meta: Any, dtype: Any, *, streamed: bool
             ) -> Callable[..., Any]:
    """The on-device preparation of a step's batch (draw, augment, normalise): from the
    data set on the devices, or of a streamed batch (`meta`: its mean and std)."""
    augment = None
    if config.crop_padding or config.flip or config.cutout:
        augment = {"crop_padding": config.crop_padding, "flip": config.flip,
                   "cutout": config.cutout}
    if streamed:
        from lars_jax.train.input_pipeline import make_streaming_prepare

        return make_streaming_prepare(seed=config.seed, mean=meta.mean, std=meta.std,
                                      dtype=dtype, augment=augment)
    return parallel.make_prepare(seed=config.seed, batch_size=config.batch_size,
                                 mean=meta.mean, std=meta.std, dtype=dtype, augment=augment)


_Placement = Callable[[TrainState], TrainState]


def _compiled_steps(config: TrainConfig, step_fn: Callable[..., Any],
                    prepare: Callable[..., Any], mesh: Any, *, unroll: bool
                    ) -> tuple[Callable[..., Any], Callable[..., Any] | None, _Placement,
                               _Placement]:
    """``(train_step, train_steps, place, unplace)`` of `Run` for ``config.parallel``."""
    if config.parallel == "jit":
        train_step = parallel.jit_train_step(step_fn, prepare, mesh)
        train_steps = None
        # steps_per_call is a speed setting with identical results. Where the loop would be
        # unrolled (convolutions on the CPU), K unrolled steps compile in ~K^1.3 the time of
        # one (14x at K=8, BENCHMARKS.md) and run no faster than K single calls: dispatch
        # them one by one instead.
        if config.steps_per_call > 1 and not unroll:
            train_steps = parallel.jit_train_steps(step_fn, prepare, mesh, config.steps_per_call)
        place = unplace = lambda s: s
        return train_step, train_steps, place, unplace
    devices = mesh.devices.tolist()
    train_step = parallel.pmap_train_step(step_fn, prepare, devices)
    local = [d for d in devices if d.process_index == jax.process_index()]
    place = lambda s: parallel.replicate(jax.device_get(s), local)
    unplace = parallel.unreplicate
    if jax.process_count() > 1:  # global arrays for evaluation and checkpoints
        unplace = lambda s: parallel.put_replicated(parallel.unreplicate(s), mesh)
    return train_step, None, place, unplace


def _unroll(config: TrainConfig, mesh: Any, model: nn.Module, variables: Any,
            example: jax.ShapeDtypeStruct) -> bool:
    """`unroll_loops` for this run: the mesh's platform, a convolution in the forward pass.

    Only runs with a loop (``grad_accum_steps`` or ``steps_per_call`` above 1) trace the
    forward pass to look for convolutions; single steps compile no loop either way.
    """
    if config.grad_accum_steps == 1 and config.steps_per_call == 1:
        return False
    forward = functools.partial(model.apply, train=False)
    return unroll_loops(mesh.devices.flat[0].platform,
                        has_convolution(forward, variables, example))


def _host_input(config: TrainConfig, mesh: Any) -> Any:
    """The config's `StreamingInput`, or None for the in-memory path (`input_pipeline`)."""
    from lars_jax.train import input_pipeline

    if not config.uses_host_input():
        return None
    return input_pipeline.StreamingInput(config, mesh)


def evaluate(run: Run, state: TrainState) -> tuple[float, float]:
    """Mean test loss and accuracy of `state` (global layout) over the test batches."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    outs = [(run.eval_fn(variables, x, y, m), n) for x, y, m, n in run.test_batches]
    loss = sum(float(loss_sum) for (loss_sum, _), _ in outs)
    correct = sum(float(correct_sum) for (_, correct_sum), _ in outs)
    count = sum(n for _, n in outs)
    return loss / count, correct / count
