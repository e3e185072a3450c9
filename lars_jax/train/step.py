"""The pure train step: loss, gradients (accumulated over micro-batches), optimizer update,
BatchNorm statistics, non-finite guard and metrics.

`make_train_step` returns ONE per-device function ``step(state, x, y) -> (state, metrics)``.
Its collectives use the mapped axis ``axis_name`` (``"data"``), so the same function runs
under ``jax.shard_map`` inside ``jax.jit`` (the jit path), under ``jax.pmap`` (the pmap
path), or unmapped on one device (``axis_name=None``); see `lars_jax.train.parallel`.

Inside the step, the local batch of ``B_local`` examples is split into ``grad_accum_steps``
contiguous micro-batches of ``m = B_local / k`` examples, processed one after another by a
``lax.scan`` (so a global batch of 32k fits in one device's memory); the gradient is the mean
of the micro-batch gradients, then averaged over devices with ``lax.pmean``. With
``StepOptions.unroll`` the scan compiles fully unrolled (straight-line code, no ``while``
loop): XLA:CPU keeps slow layouts for convolutions inside loop bodies, an order of magnitude
slower per step (BENCHMARKS.md), so `unroll_loops` turns it on for convolutional models on
the CPU backend and leaves GPU/TPU programs rolled. BatchNorm
statistics are taken per micro-batch (per device, across devices through the model's
``bn_axis_name``, or over ghost groups, as the model was built); the running averages are
updated once per step: each micro-batch's update starts from the step's running statistics
and the updates are averaged over micro-batches and devices. As the update is linear
(``r' = m r + (1 - m) s``), that is one update with the mean of the micro-batch statistics
``s``, so ``k`` micro-batches on one device give the running statistics of ``k`` devices with
one micro-batch each.

With ``StepOptions.masked`` (the MLPerf mode's kept remainder batch), rows labelled -1 are
padding: the loss is the sum over the real rows divided by the global number of real rows
(so the gradient is the mean over the real examples, whatever the padding), the accuracy
likewise, and every BatchNorm layer takes its statistics over the real rows only (flax's
``nn.BatchNorm(mask=...)``, passed to every BatchNorm call through
``nn.intercept_methods``). Each group must hold at least one real row (the host input
spreads a remainder over the groups).

Every gradient "group" (one micro-batch on one device) has the same size, so the groups also
give the gradient-noise-scale statistics for free (McCandlish et al.): ``grad_sqnorm_small``
(mean over groups of each group gradient's squared norm), ``grad_sqnorm_big`` (squared norm
of the mean gradient), ``batch_small`` and ``batch_big``.

References:
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017
  (arXiv 1708.03888).
  Huo, Gu, Huang, "Large Batch Training Does Not Need Warmup", 2020 (arXiv 2002.01576).
  McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training", 2018
  (arXiv 1812.06162).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
    """Everything a run carries from step to step (and checkpoints).

    Attributes:
      step: number of completed steps (int32 scalar); the data of step ``s`` is a function
        of ``(seed, s)`` only.
      params: model parameters (float32).
      batch_stats: BatchNorm running statistics (an empty dict without BatchNorm).
      opt_state: optimizer state (float32).
      skipped: steps skipped because of non-finite loss, gradients or updated parameters
        (nan_policy="skip"; a skipped step leaves parameters, BatchNorm statistics and the
        optimizer state, hence the learning-rate schedule's count, as they were, like
        `optax.apply_if_finite`). Once it passes `StepOptions.max_skipped` the state no
        longer changes, so the count read later is the one that passed the limit.
      nonfinite_step: -1, or the number of steps completed before the one whose loss,
        gradients or updated parameters were non-finite (nan_policy="stop"; from then on
        the state no longer changes).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    skipped: jax.Array
    nonfinite_step: jax.Array


def init_train_state(params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation
                     ) -> TrainState:
    """A fresh TrainState at step 0."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats if batch_stats is not None else {},
        opt_state=tx.init(params),
        skipped=jnp.zeros((), jnp.int32),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Static options of the train step.

    Attributes:
      num_classes: number of classes (for label smoothing).
      axis_name: mapped axis of the data-parallel devices (None: one device, no collectives).
      num_devices: size of that axis (1 without it).
      grad_accum_steps: micro-batches per device per step.
      label_smoothing: label smoothing of the cross-entropy.
      sync_batch_stats: average the running BN statistics over devices after the step (needed
        when statistics were per device or per ghost group; with a model that already reduces
        over ``axis_name`` they are identical on all devices).
      clars_granularity: None (optimizer takes no norms), "example", "device" or
        "micro_batch": which gradient norms are passed to the optimizer's update as
        ``per_example_norms``.
      nan_policy: "stop" or "skip".
      max_skipped: nan_policy="skip": the most skipped steps a run may have (None: no
        limit); the step after which ``skipped`` exceeds it is the last that changes the
        state (the host reads ``skipped`` only at log points).
      log_layer_stats: return per-layer trust ratios, weight and gradient norms.
      log_diagnostics: return `lars_jax.diagnostics.layer_diagnostics` scalars.
      weight_decay: for the diagnostics.
      momentum: for the diagnostics.
      log_noise_scale: compute every example's gradient norms (`value_grad_and_norms`, in
        the same backward pass) and return the one-batch gradient-noise-scale estimates of
        `lars_jax.diagnostics.noise_scale_from_sqnorms` over the global batch:
        ``noise_trace_sigma``, ``noise_grad_sqnorm`` and ``noise_example_sqnorm`` (``mean_i
        |g_i|^2``); used by ``lars-jax advise``. With BatchNorm the norms are those of each
        example's contribution and the estimates overstate the noise (see
        `noise_scale_from_norms`): advise then uses the two-batch statistics instead.
      unroll: compile the micro-batch ``lax.scan`` fully unrolled (``unroll=True``): no
        ``while`` loop, one copy of forward and backward per micro-batch (compile time
        grows with ``grad_accum_steps``). The trainer sets it with `unroll_loops`.
      masked: rows with label -1 are padding, left out of the loss, the accuracy and the
        BatchNorm statistics (module docstring).
    """

    num_classes: int
    axis_name: str | None = None
    num_devices: int = 1
    grad_accum_steps: int = 1
    label_smoothing: float = 0.0
    sync_batch_stats: bool = True
    clars_granularity: str | None = None
    nan_policy: str = "stop"
    max_skipped: int | None = None
    log_layer_stats: bool = False
    log_diagnostics: bool = False
    weight_decay: float = 0.0
    momentum: float = 0.0
    log_noise_scale: bool = False
    unroll: bool = False
    masked: bool = False


def has_convolution(fn: Callable[..., Any], *args: Any) -> bool:
    """Whether ``fn(*args)`` computes a convolution (``conv_general_dilated`` in its jaxpr).

    Traces `fn` abstractly (nothing runs); nested jaxprs (jit, custom derivatives, loops)
    are part of the printed jaxpr, so a convolution anywhere inside counts.
    """
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


def unroll_loops(platform: str, convolutional: bool) -> bool:
    """Whether the trainer's loops over micro-batches and steps compile fully unrolled.

    True for convolutional models on the CPU backend only. XLA:CPU assigns slow layouts to
    convolutions (and their gradients) inside ``while`` bodies, so a ResNet step inside a
    rolled ``lax.scan`` runs ~15x slower than alone, and as fast as alone when unrolled
    (BENCHMARKS.md, "Steps inside a while loop"). GPU and TPU programs stay rolled (their
    compilers are not affected, and rolled loops compile once per body), and so do models
    without convolutions (an MLP's step is fine in a loop, and many steps per call would
    otherwise multiply its compile time).

    Args:
      platform: the devices' platform (``jax.Device.platform``: "cpu", "gpu", "tpu", ...).
      convolutional: whether the step computes convolutions (`has_convolution`).
    """
    return platform == "cpu" and convolutional


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)


def _sqnorm(tree: PyTree) -> jax.Array:
    return optax.tree.norm(tree, squared=True)


def _leaf_norms(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)))), tree)


def _all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _flat_names(prefix: str, tree: PyTree) -> Metrics:
    from lars_jax.diagnostics import path_to_name

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[f"{prefix}/{path_to_name(path)}"] = leaf
    return out


def _bn_mask(mask: jax.Array) -> Callable[..., Any]:
    """A `flax.linen.intercept_methods` interceptor giving every BatchNorm call `mask`."""

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            x = args[0]
            kwargs = {**kwargs, "mask": mask.reshape((-1,) + (1,) * (x.ndim - 1))}
        return next_fun(*args, **kwargs)

    return interceptor


def make_loss_fn(model: nn.Module, opts: StepOptions) -> Callable[..., Any]:
    """``loss_fn(params, batch_stats, x, y, rows=None) -> (loss, (new_batch_stats,
    accuracy))``: the means over the batch, or with ``opts.masked`` the sums over the real
    rows (label >= 0) divided by ``rows`` (real rows per group, over the whole step)."""

    def loss_fn(params, batch_stats, x, y, rows=None):
        variables = {"params": params}
        mask = y >= 0 if opts.masked else None
        intercept = (nn.intercept_methods(_bn_mask(mask)) if mask is not None
                     else contextlib.nullcontext())
        with intercept:
            if batch_stats:
                variables["batch_stats"] = batch_stats
                logits, updates = model.apply(variables, x, train=True,
                                              mutable=["batch_stats"])
                new_stats = updates["batch_stats"]
            else:
                logits = model.apply(variables, x, train=True)
                new_stats = batch_stats
        ce = cross_entropy(logits, y, opts.num_classes, opts.label_smoothing)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        if mask is None:
            return jnp.mean(ce), (new_stats, jnp.mean(correct))
        loss = jnp.sum(jnp.where(mask, ce, 0.0)) / rows
        return loss, (new_stats, jnp.sum(jnp.where(mask, correct, 0.0)) / rows)

    return loss_fn


def _real_rows_per_group(y: jax.Array, axis: str | None, groups: int) -> jax.Array:
    """Real rows (label >= 0) of the whole step, over all devices, per gradient group."""
    count = jnp.sum((y >= 0).astype(jnp.float32))
    if axis is not None:
        count = jax.lax.psum(count, axis)
    return count / groups


def _num_devices(opts: StepOptions) -> int:
    """Devices of the mapped axis (1 without one)."""
    return opts.num_devices if opts.axis_name is not None else 1


class _Grads(NamedTuple):
    """A gradient of the step (one micro-batch's, one device's or the global one) and what
    comes with it.

    Attributes:
      loss: the mean loss.
      accuracy: the mean accuracy.
      grads: the mean gradient.
      batch_stats: the new BatchNorm running statistics.
      norms: the gradient norms passed to the optimizer as ``per_example_norms`` (None
        unless ``StepOptions.clars_granularity`` asks for them).
      sq_small: the mean over gradient groups of each group gradient's squared norm (None
        with one group).
      ex_sq: with ``StepOptions.log_noise_scale``, the mean over examples of their squared
        gradient norms (None without).
    """

    loss: jax.Array
    accuracy: jax.Array
    grads: PyTree
    batch_stats: PyTree
    norms: PyTree | None
    sq_small: jax.Array | None
    ex_sq: jax.Array | None


def _make_micro_grads(loss_fn: Callable[..., Any], opts: StepOptions
                      ) -> Callable[..., _Grads]:
    """``micro_grads(params, batch_stats, x, y, rows=None) -> _Grads`` of one micro-batch
    (``sq_small`` None): every example's gradient norms come from the same backward pass
    (`value_grad_and_norms`) when the optimizer or the noise-scale log needs them."""
    granularity = opts.clars_granularity
    example_norms = granularity == "example" or opts.log_noise_scale

    def micro_grads(params: PyTree, batch_stats: PyTree, x: jax.Array, y: jax.Array,
                    rows: jax.Array | None = None) -> _Grads:
        ex_sq = None
        if example_norms:
            from lars_jax.per_example import value_grad_and_norms

            fn = lambda p, xx, yy: loss_fn(p, batch_stats, xx, yy, rows)
            (loss, (stats, acc)), grads, norms = value_grad_and_norms(
                fn, params, x, y, has_aux=True)
            if opts.log_noise_scale:
                ex_sq = jnp.mean(sum(jnp.square(n) for n in jax.tree.leaves(norms)))
            if granularity != "example":
                norms = None
        else:
            (loss, (stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, batch_stats, x, y, rows)
            norms = None
        if granularity == "micro_batch":
            norms = jax.tree.map(lambda v: v.reshape(1), _leaf_norms(grads))
        return _Grads(loss, acc, grads, stats, norms, None, ex_sq)

    return micro_grads


def _accumulate(micro_grads: Callable[..., _Grads], state: TrainState, x: jax.Array,
                y: jax.Array, rows: jax.Array | None, opts: StepOptions) -> _Grads:
    """The mean over ``opts.grad_accum_steps`` contiguous micro-batches (a ``lax.scan``).

    Every micro-batch starts from the step's running statistics; their updates are
    averaged (one update per step, as across devices).
    """
    accum = opts.grad_accum_steps
    m = x.shape[0] // accum
    xs = x.reshape(accum, m, *x.shape[1:])
    ys = y.reshape(accum, m, *y.shape[1:])

    def body(gsum: PyTree, xy: tuple[jax.Array, jax.Array]) -> tuple[PyTree, _Grads]:
        g = micro_grads(state.params, state.batch_stats, *xy, rows)
        gsum = jax.tree.map(jnp.add, gsum, g.grads)
        return gsum, g._replace(grads=None, sq_small=_sqnorm(g.grads))

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    gsum, each = jax.lax.scan(body, zeros, (xs, ys), unroll=opts.unroll)
    norms = each.norms
    if norms is not None:  # (accum, m) or (accum, 1) -> (accum*m,) or (accum,)
        norms = jax.tree.map(lambda v: v.reshape(-1), norms)
    return _Grads(
        loss=jnp.mean(each.loss),
        accuracy=jnp.mean(each.accuracy),
        grads=jax.tree.map(lambda g: g / accum, gsum),
        batch_stats=jax.tree.map(lambda v: jnp.mean(v, axis=0), each.batch_stats),
        norms=norms,
        sq_small=jnp.mean(each.sq_small),
        ex_sq=None if each.ex_sq is None else jnp.mean(each.ex_sq),
    )


def _device_grads(micro_grads: Callable[..., _Grads], state: TrainState, x: jax.Array,
                  y: jax.Array, rows: jax.Array | None, opts: StepOptions) -> _Grads:
    """This device's gradient of the step (before any collective), with ``sq_small`` when
    the step has >= 2 gradient groups and, for ``clars_granularity="device"``, the norms
    of the device's gradient."""
    if opts.grad_accum_steps == 1:
        g = micro_grads(state.params, state.batch_stats, x, y, rows)
        groups = _num_devices(opts)  # one gradient group per device
        g = g._replace(sq_small=_sqnorm(g.grads) if groups >= 2 else None)
    else:
        g = _accumulate(micro_grads, state, x, y, rows, opts)
    if opts.clars_granularity == "device":
        g = g._replace(norms=jax.tree.map(lambda v: v.reshape(1), _leaf_norms(g.grads)))
    return g


def _mean_over_devices(g: _Grads, axis: str, sync_batch_stats: bool) -> _Grads:
    """The global gradient: the means over the devices of ``axis`` (the BatchNorm
    statistics only with `sync_batch_stats`), and every device's norms gathered in device
    order."""
    loss, acc = jax.lax.pmean((g.loss, g.accuracy), axis)
    stats = g.batch_stats
    if sync_batch_stats and stats:
        stats = jax.lax.pmean(stats, axis)
    return _Grads(
        loss=loss,
        accuracy=acc,
        grads=jax.lax.pmean(g.grads, axis),
        batch_stats=stats,
        norms=None if g.norms is None else jax.lax.all_gather(g.norms, axis, tiled=True),
        sq_small=None if g.sq_small is None else jax.lax.pmean(g.sq_small, axis),
        ex_sq=None if g.ex_sq is None else jax.lax.pmean(g.ex_sq, axis),
    )


def _accept_if_finite(state: TrainState, finite: jax.Array, params: PyTree,
                      batch_stats: PyTree, opt_state: PyTree, opts: StepOptions
                      ) -> TrainState:
    """The state after the step: its new values where the step is `finite` and the run
    still changes (``opts.nan_policy`` and ``opts.max_skipped``), else the old ones."""
    if opts.nan_policy == "skip":
        running = (jnp.ones((), bool) if opts.max_skipped is None
                   else state.skipped <= opts.max_skipped)
        ok = finite & running
        step_inc = running.astype(jnp.int32)
        skipped = state.skipped + (running & ~finite).astype(jnp.int32)
        nonfinite_step = state.nonfinite_step
    else:
        running = state.nonfinite_step < 0
        ok = finite & running
        step_inc = ok.astype(jnp.int32)
        skipped = state.skipped
        nonfinite_step = jnp.where(running & ~finite, state.step, state.nonfinite_step)
    sel = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    return TrainState(
        step=state.step + step_inc,
        params=sel(params, state.params),
        batch_stats=sel(batch_stats, state.batch_stats),
        opt_state=sel(opt_state, state.opt_state),
        skipped=skipped,
        nonfinite_step=nonfinite_step,
    )


def _noise_scale_metrics(g: _Grads, local_batch: int, opts: StepOptions) -> Metrics:
    """The gradient-noise-scale statistics of the step (module docstring; with >= 2
    gradient groups) and, with ``opts.log_noise_scale``, the one-batch estimates."""
    devices = _num_devices(opts)
    metrics: Metrics = {}
    if devices * opts.grad_accum_steps >= 2:
        metrics["grad_sqnorm_small"] = g.sq_small
        metrics["grad_sqnorm_big"] = _sqnorm(g.grads)
        metrics["batch_small"] = jnp.asarray(local_batch // opts.grad_accum_steps,
                                             jnp.float32)
        metrics["batch_big"] = jnp.asarray(local_batch * devices, jnp.float32)
    if g.ex_sq is not None:
        from lars_jax.diagnostics import noise_scale_from_sqnorms

        est = noise_scale_from_sqnorms(g.ex_sq, _sqnorm(g.grads), local_batch * devices)
        metrics["noise_trace_sigma"] = est.trace_sigma
        metrics["noise_grad_sqnorm"] = est.grad_sq_norm
        metrics["noise_example_sqnorm"] = est.mean_example_sq_norm
    return metrics


def _layer_metrics(state: TrainState, g: _Grads, updates: PyTree, opt_state: PyTree,
                   lr: jax.Array, opts: StepOptions) -> Metrics:
    """Per-layer statistics (``opts.log_layer_stats``) and diagnostics
    (``opts.log_diagnostics``) of the step; empty when neither is asked for."""
    metrics: Metrics = {}
    if opts.log_layer_stats:
        metrics.update(_flat_names("weight_norm", _leaf_norms(state.params)))
        metrics.update(_flat_names("grad_norm", _leaf_norms(g.grads)))
        from lars_jax.trust_ratio import trust_ratio_stats

        tr = trust_ratio_stats(opt_state)
        if tr is not None:
            metrics.update(_flat_names("trust_ratio", tr["trust_ratio"]))
    if opts.log_diagnostics:
        from lars_jax.diagnostics import layer_diagnostics

        diag = layer_diagnostics(state.params, g.grads, state.opt_state, lr,
                                 opts.weight_decay, opts.momentum, updates=updates)
        metrics.update({f"diag/{name}": v for name, v in diag.items()})
    return metrics


def _step_metrics(state: TrainState, g: _Grads, updates: PyTree, opt_state: PyTree,
                  finite: jax.Array, local_batch: int, opts: StepOptions,
                  lr_fn: Callable[[PyTree], jax.Array] | None) -> Metrics:
    """The metrics of the step (`make_train_step`'s Returns) from the state before it."""
    metrics: Metrics = {
        "loss": g.loss,
        "accuracy": g.accuracy,
        "grad_norm": jnp.sqrt(_sqnorm(g.grads)),
        "param_norm": jnp.sqrt(_sqnorm(state.params)),
        "finite": finite.astype(jnp.float32),
    }
    hyperparams = getattr(opt_state, "hyperparams", None)
    if lr_fn is not None:
        metrics["lr"] = lr_fn(opt_state)
    elif isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
        metrics["lr"] = jnp.asarray(hyperparams["learning_rate"], jnp.float32)
    metrics.update(_noise_scale_metrics(g, local_batch, opts))
    lr = metrics.get("lr", jnp.zeros((), jnp.float32))
    metrics.update(_layer_metrics(state, g, updates, opt_state, lr, opts))
    return metrics


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    opts: StepOptions,
    lr_fn: Callable[[PyTree], jax.Array] | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """Builds the per-device train step ``step(state, x, y) -> (state, metrics)``.

    Args:
      model: a Flax model applied as ``model.apply(variables, x, train=True,
        mutable=["batch_stats"])``; build it with ``bn_axis_name=opts.axis_name`` for
        cross-device BatchNorm statistics.
      tx: the optimizer (an optax transformation; with ``clars_granularity`` set it must
        accept ``per_example_norms`` in ``update``).
      opts: static options.
      lr_fn: ``lr_fn(opt_state)``, the learning rate of the update just made, logged as
        ``lr`` (from `lars_jax.train.build.make_optimizer`); without it, the ``lr`` is
        ``opt_state.hyperparams["learning_rate"]`` when the optimizer has one.

    Returns:
      The step function. ``x`` holds this device's examples (already augmented and
      normalised, in the compute dtype), ``y`` their int labels; the number of examples must
      be divisible by ``opts.grad_accum_steps``. Metrics are scalars identical on all
      devices: ``loss``, ``accuracy``, ``grad_norm``, ``param_norm``, ``finite``, ``lr`` (when
      the optimizer was built with ``optax.inject_hyperparams``), the noise-scale statistics
      when there are >= 2 gradient groups, and per-layer statistics on request.
    """
    micro_grads = _make_micro_grads(make_loss_fn(model, opts), opts)
    groups = _num_devices(opts) * opts.grad_accum_steps

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, Metrics]:
        rows = _real_rows_per_group(y, opts.axis_name, groups) if opts.masked else None
        g = _device_grads(micro_grads, state, x, y, rows, opts)
        if opts.axis_name is not None:
            g = _mean_over_devices(g, opts.axis_name, opts.sync_batch_stats)
        extra = {} if opts.clars_granularity is None else {"per_example_norms": g.norms}
        updates, opt_state = tx.update(g.grads, state.opt_state, state.params, **extra)
        new_params = optax.apply_updates(state.params, updates)
        # a finite gradient can still make the parameters overflow (a huge learning rate):
        # the step is accepted only if the parameters it makes, and their squared norm (in
        # float32: an overflow there means parameters beyond 1e19), are finite too
        finite = (jnp.isfinite(g.loss) & _all_finite(g.grads)
                  & jnp.isfinite(_sqnorm(new_params)))
        new_state = _accept_if_finite(state, finite, new_params, g.batch_stats, opt_state, opts)
        metrics = _step_metrics(state, g, updates, opt_state, finite, x.shape[0], opts, lr_fn)
        return new_state, metrics

    return step
