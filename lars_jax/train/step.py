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
    loss_fn = make_loss_fn(model, opts)
    accum = opts.grad_accum_steps
    axis = opts.axis_name
    devices = opts.num_devices if axis is not None else 1
    granularity = opts.clars_granularity
    groups = devices * accum
    example_norms = granularity == "example" or opts.log_noise_scale

    def micro_grads(params, batch_stats, x, y, rows=None):
        """Loss, grads, new stats, accuracy, (per-example) norms of one micro-batch and
        the mean over its examples of their squared gradient norms (with log_noise_scale)."""
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
        return loss, grads, stats, acc, norms, ex_sq

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, Metrics]:
        params = state.params
        rows = _real_rows_per_group(y, axis, groups) if opts.masked else None
        if accum == 1:
            loss, grads, stats, acc, norms, ex_sq = micro_grads(params, state.batch_stats, x, y,
                                                                rows)
            sq_small = _sqnorm(grads) if groups >= 2 else None
        else:
            m = x.shape[0] // accum
            xs = x.reshape(accum, m, *x.shape[1:])
            ys = y.reshape(accum, m, *y.shape[1:])

            def body(gsum, xy):
                # every micro-batch starts from the step's running statistics; their
                # updates are averaged below (one update per step, as across devices)
                loss, g, stats, acc, norms, ex_sq = micro_grads(params, state.batch_stats, *xy,
                                                                rows)
                gsum = jax.tree.map(jnp.add, gsum, g)
                return gsum, (loss, acc, norms, _sqnorm(g), stats, ex_sq)

            zeros = jax.tree.map(jnp.zeros_like, params)
            gsum, (losses, accs, norms, sqs, stats, ex_sq) = jax.lax.scan(
                body, zeros, (xs, ys), unroll=opts.unroll)
            ex_sq = None if ex_sq is None else jnp.mean(ex_sq)
            stats = jax.tree.map(lambda v: jnp.mean(v, axis=0), stats)
            grads = jax.tree.map(lambda g: g / accum, gsum)
            loss, acc = jnp.mean(losses), jnp.mean(accs)
            sq_small = jnp.mean(sqs)
            if norms is not None:  # (accum, m) or (accum, 1) -> (accum*m,) or (accum,)
                norms = jax.tree.map(lambda v: v.reshape(-1), norms)

        if granularity == "device":
            norms = jax.tree.map(lambda v: v.reshape(1), _leaf_norms(grads))
        if axis is not None:
            grads = jax.lax.pmean(grads, axis)
            loss, acc = jax.lax.pmean((loss, acc), axis)
            if sq_small is not None:
                sq_small = jax.lax.pmean(sq_small, axis)
            if ex_sq is not None:
                ex_sq = jax.lax.pmean(ex_sq, axis)
            if norms is not None:
                norms = jax.lax.all_gather(norms, axis, tiled=True)
            if opts.sync_batch_stats and stats:
                stats = jax.lax.pmean(stats, axis)

        extra = {} if granularity is None else {"per_example_norms": norms}
        updates, opt_state = tx.update(grads, state.opt_state, params, **extra)
        new_params = optax.apply_updates(params, updates)

        # a finite gradient can still make the parameters overflow (a huge learning rate):
        # the step is accepted only if the parameters it makes, and their squared norm (in
        # float32: an overflow there means parameters beyond 1e19), are finite too
        finite = (jnp.isfinite(loss) & _all_finite(grads)
                  & jnp.isfinite(_sqnorm(new_params)))
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
        new_state = TrainState(
            step=state.step + step_inc,
            params=sel(new_params, params),
            batch_stats=sel(stats, state.batch_stats),
            opt_state=sel(opt_state, state.opt_state),
            skipped=skipped,
            nonfinite_step=nonfinite_step,
        )

        metrics: Metrics = {
            "loss": loss,
            "accuracy": acc,
            "grad_norm": jnp.sqrt(_sqnorm(grads)),
            "param_norm": jnp.sqrt(_sqnorm(params)),
            "finite": finite.astype(jnp.float32),
        }
        hyperparams = getattr(opt_state, "hyperparams", None)
        if lr_fn is not None:
            metrics["lr"] = lr_fn(opt_state)
        elif isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
            metrics["lr"] = jnp.asarray(hyperparams["learning_rate"], jnp.float32)
        if groups >= 2:
            metrics["grad_sqnorm_small"] = sq_small
            metrics["grad_sqnorm_big"] = _sqnorm(grads)
            metrics["batch_small"] = jnp.asarray(x.shape[0] // accum, jnp.float32)
            metrics["batch_big"] = jnp.asarray(x.shape[0] * devices, jnp.float32)
        if ex_sq is not None:
            from lars_jax.diagnostics import noise_scale_from_sqnorms

            est = noise_scale_from_sqnorms(ex_sq, _sqnorm(grads), x.shape[0] * devices)
            metrics["noise_trace_sigma"] = est.trace_sigma
            metrics["noise_grad_sqnorm"] = est.grad_sq_norm
            metrics["noise_example_sqnorm"] = est.mean_example_sq_norm
        if opts.log_layer_stats:
            metrics.update(_flat_names("weight_norm", _leaf_norms(params)))
            metrics.update(_flat_names("grad_norm", _leaf_norms(grads)))
            from lars_jax.trust_ratio import trust_ratio_stats

            tr = trust_ratio_stats(opt_state)
            if tr is not None:
                metrics.update(_flat_names("trust_ratio", tr["trust_ratio"]))
        if opts.log_diagnostics:
            from lars_jax.diagnostics import layer_diagnostics

            lr = metrics.get("lr", jnp.zeros((), jnp.float32))
            diag = layer_diagnostics(params, grads, state.opt_state, lr, opts.weight_decay,
                                     opts.momentum, updates=updates)
            metrics.update({f"diag/{name}": v for name, v in diag.items()})
        return new_state, metrics

    return step
