"""The training loop: `train(config) -> summary dict`, the single entry point.

One run: (multi-host setup) -> data on the devices -> model, learning-rate rule, optimizer
-> restore the newest usable checkpoint -> steps (progress bar, metrics JSONL, periodic
evaluation and checkpoints) -> final evaluation, checkpoint, ``summary.json``, printed
summary and (optionally) a plot.

Determinism: the examples and augmentation of step ``s`` depend only on ``(seed, s)``, and
the state is checkpointed bit for bit, so a run killed at any point and restarted with the
same command ends with the same parameters as an uninterrupted run (bitwise on CPU).

Learning-rate rule: ``peak = learning_rate * scale(batch_size / base_batch_size)`` with
``scale`` linear, sqrt or none; a gradual warmup over ``warmup_epochs`` from
``learning_rate`` (``warmup_start="base"``, Goyal et al.) or from 0 (``"zero"``) to
``peak``; then the decay schedule over the remaining steps. For ``schedule="onecycle"`` the
1cycle schedule spans the whole run and ``warmup_epochs / epochs`` is its rising fraction.
The optimizer is wrapped in ``optax.inject_hyperparams``, so the rate of every step is in
the optimizer state and in the logged ``lr``; the base learning rate and the weight decay
are arrays there, not constants of the compiled step, so an lr or weight-decay grid
compiles once per shape of run.

References:
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
  (arXiv 1706.02677).
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017
  (arXiv 1708.03888).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lars_jax.train import parallel as par
from lars_jax.train.checkpoint import STRUCTURE_FIELDS, Checkpointer
from lars_jax.train.config import TrainConfig
from lars_jax.train.metrics import CONFIG_FILE, SUMMARY_FILE, MetricsWriter, mean_rows, write_json
from lars_jax.train.step import StepOptions, init_train_state, make_train_step


class NonFiniteError(RuntimeError):
    """Training stopped because the loss or the gradients were NaN or Inf."""


class Data(NamedTuple):
    """An in-memory data set: uint8 NHWC images and int32 labels, plus normalisation."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: Any
    std: Any


# ----------------------------------------------------------------------------- setup


def maybe_initialize_distributed(config: TrainConfig) -> None:
    """Calls `jax.distributed.initialize` for multi-process runs.

    Used when any of ``coordinator_address``, ``num_processes``, ``process_id`` is set in
    the config, or the environment has ``JAX_COORDINATOR_ADDRESS`` (with
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``). Must run before anything touches a
    device. On CPU, cross-process collectives use gloo.
    """
    env = os.environ
    addr = config.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    nproc = config.num_processes or (int(env["JAX_NUM_PROCESSES"])
                                     if "JAX_NUM_PROCESSES" in env else None)
    pid = config.process_id if config.process_id is not None else (
        int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
    if addr is None and nproc is None and pid is None:
        return
    if jax.distributed.is_initialized():
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # option absent in some versions: the default is used
        pass
    jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)


def load_data(config: TrainConfig) -> Data:
    """Loads the train and test splits into memory (first N examples with *_subset)."""
    from lars_jax import data as data_lib

    info = data_lib.dataset_info(config.dataset)
    if not getattr(info, "fits_on_device", True):
        raise ValueError(
            f"TrainConfig.dataset={config.dataset!r}: train() keeps the data set in device "
            "memory; training from the host pipeline (lars_jax.data.host_batches) is not "
            "implemented in the trainer yet")
    xtr, ytr = data_lib.load_split(config.dataset, "train", data_dir=config.data_dir)
    test_split = getattr(info, "test_split", "test")
    xte, yte = data_lib.load_split(config.dataset, test_split, data_dir=config.data_dir)
    if config.train_subset:
        xtr, ytr = xtr[: config.train_subset], ytr[: config.train_subset]
    if config.test_subset:
        xte, yte = xte[: config.test_subset], yte[: config.test_subset]
    return Data(np.asarray(xtr), np.asarray(ytr, np.int32), np.asarray(xte),
                np.asarray(yte, np.int32), int(_get(info, "num_classes")),
                _get(info, "mean"), _get(info, "std"))


def _get(info: Any, key: str) -> Any:
    return info[key] if isinstance(info, dict) else getattr(info, key)


def steps_per_epoch(config: TrainConfig, num_train: int) -> int:
    """Optimizer steps per epoch (the last partial batch of an epoch is dropped)."""
    return max(1, num_train // config.batch_size)


def next_stop(step: int, total_steps: int, log_every: int, eval_every: int,
              checkpoint_every: int) -> int:
    """The first step after `step` at which the loop logs, evaluates, checkpoints or ends.

    A multi-step call (``steps_per_call > 1``) never runs past it, so those events happen
    at exactly the same steps as with one step per call.
    """
    stops = [total_steps, (step // log_every + 1) * log_every]
    for every in (eval_every, checkpoint_every):
        if every > 0:
            stops.append((step // every + 1) * every)
    return min(stops)


def learning_rate_schedule(config: TrainConfig, spe: int, total_steps: int) -> optax.Schedule:
    """The per-step learning rate of `config` (scaling, warmup, decay; module docstring)."""
    from lars_jax.schedules import gradual_warmup, linear_scaling, onecycle, sqrt_scaling

    base, b, b0 = config.learning_rate, config.batch_size, config.base_batch_size
    if config.lr_scaling == "linear":
        peak = linear_scaling(base, b, b0)
    elif config.lr_scaling == "sqrt":
        peak = sqrt_scaling(base, b, b0)
    else:
        peak = base
    warm = min(int(round(config.warmup_epochs * spe)), total_steps)
    if config.schedule == "onecycle":
        pct = warm / total_steps if warm else 0.3
        return onecycle(total_steps, peak, pct_start=min(max(pct, 1e-3), 0.999))
    rest = max(total_steps - warm, 1)
    end = config.end_learning_rate
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=end / peak if peak else 0.0)
    elif config.schedule == "poly2":
        after = optax.polynomial_schedule(peak, end, 2, rest)
    elif config.schedule == "linear":
        after = optax.linear_schedule(peak, end, rest)
    elif config.schedule == "step":
        after = optax.piecewise_constant_schedule(
            peak, {int(rest * 0.5): 0.1, int(rest * 0.75): 0.1})
    else:
        after = optax.constant_schedule(peak)
    start = 0.0 if config.warmup_start == "zero" else min(base, peak)
    return gradual_warmup(start, peak, warm, after)


def learning_rate_shape(config: TrainConfig, spe: int, total_steps: int) -> optax.Schedule:
    """The schedule of `config` divided by ``config.learning_rate`` (its value at lr 1).

    Every rule of :func:`learning_rate_schedule` is linear in ``learning_rate`` and
    ``end_learning_rate``, so ``schedule(t) == learning_rate * shape(t)``. The trainer keeps
    ``learning_rate`` as a number in the optimizer state and only ``shape`` in the compiled
    program: runs that differ only in the learning rate (the lr grids of a sweep) share one
    compiled step, reused from JAX's compilation cache.
    """
    import dataclasses

    lr = config.learning_rate
    unit = dataclasses.replace(config, learning_rate=1.0,
                               end_learning_rate=config.end_learning_rate / lr if lr else 0.0)
    return learning_rate_schedule(unit, spe, total_steps)


def make_optimizer(config: TrainConfig, shape: optax.Schedule
                   ) -> optax.GradientTransformation:
    """The config's optimizer with an injected, logged learning rate.

    The rate of step ``t`` is ``base_learning_rate * lr_shape(t)``: ``lr_shape`` (from
    :func:`learning_rate_shape`) is a function of the step count and ``base_learning_rate``
    (``config.learning_rate``) and ``weight_decay`` are arrays in the optimizer state
    (``opt_state.hyperparams``), so they are not compiled into the train step.
    """
    import lars_jax

    common = dict(momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "sgd":
        factory = functools.partial(lars_jax.sgd, **common)
    else:
        fn = {"lars": lars_jax.lars, "larc": lars_jax.larc, "clars": lars_jax.clars}
        kw = dict(common, trust_coefficient=config.trust_coefficient,
                  denominator=config.denominator)
        if config.optimizer == "lars" and config.clip:
            kw["clip"] = 1.0
        factory = functools.partial(fn[config.optimizer], **kw)
    def scaled(lr_shape, base_learning_rate, weight_decay):
        return factory(learning_rate=base_learning_rate * lr_shape, weight_decay=weight_decay)

    return optax.inject_hyperparams(scaled)(
        lr_shape=shape, base_learning_rate=config.learning_rate,
        weight_decay=config.weight_decay)


def build_model(config: TrainConfig, num_classes: int, *, axis_name: str | None):
    from lars_jax.models import create_model

    bn_axis = axis_name if config.bn_span == "global" and config.norm == "batch" else None
    ghost = config.bn_ghost_size if config.bn_span == "ghost" else None
    return create_model(
        config.model, num_classes=num_classes, norm=config.norm, bn_axis_name=bn_axis,
        bn_ghost_size=ghost, width=config.width,
        dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
        zero_init_last_bn=config.zero_init_last_bn)


def _augment_kwargs(config: TrainConfig) -> dict[str, Any] | None:
    if config.crop_padding == 0 and not config.flip and config.cutout == 0:
        return None
    return {"crop_padding": config.crop_padding, "flip": config.flip, "cutout": config.cutout}


def init_variables(model: Any, seed: int, shape: tuple[int, ...], dtype: Any) -> Any:
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


def make_eval_fn(model: Any, mesh: Any, num_classes: int, mean: Any, std: Any, dtype: Any):
    """``eval_fn(variables, images_u8, labels, mask) -> (loss_sum, correct_sum)`` (jitted)."""
    from lars_jax.data import normalize
    from lars_jax.train.step import cross_entropy

    mean = tuple(float(m) for m in np.atleast_1d(mean))
    std = tuple(float(s) for s in np.atleast_1d(std))
    sharded = par.batch_sharded(mesh)

    @jax.jit
    def eval_fn(variables, images, labels, mask):
        images = jax.lax.with_sharding_constraint(images, sharded)
        x = normalize(images, mean, std, dtype)
        logits = model.apply(variables, x, train=False)
        loss = cross_entropy(logits, labels, num_classes)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.sum(loss * mask), jnp.sum(correct * mask)

    return eval_fn


def evaluate(eval_fn, variables, test_batches) -> tuple[float, float]:
    """Mean test loss and accuracy over the (padded, masked) test batches."""
    loss, correct, count = 0.0, 0.0, 0.0
    outs = [(eval_fn(variables, x, y, m), n) for x, y, m, n in test_batches]
    for (lsum, csum), n in outs:
        loss += float(lsum)
        correct += float(csum)
        count += n
    return loss / count, correct / count


def _test_batches(data: Data, batch: int, mesh: Any) -> list[tuple[Any, Any, Any, int]]:
    n = len(data.test_labels)
    sh = par.batch_sharded(mesh)
    out = []
    for start in range(0, n, batch):
        x = data.test_images[start:start + batch]
        y = data.test_labels[start:start + batch]
        k = len(y)
        m = np.ones(batch, np.float32)
        if k < batch:
            x = np.concatenate([x, np.zeros((batch - k, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(batch - k, y.dtype)])
            m[k:] = 0
        out.append((par.put_global(x, sh), par.put_global(y, sh), par.put_global(m, sh), k))
    return out


# ----------------------------------------------------------------------------- train


def train(config: TrainConfig, *, data: Data | None = None, return_state: bool = False
          ) -> Any:
    """Runs one training job; returns the summary (also written to ``summary.json``).

    Args:
      config: the run's settings (validated first; bad values raise ValueError naming the
        field before any compute).
      data: an in-memory data set to use instead of ``config.dataset`` (for custom data
        and tests).
      return_state: also return the final `TrainState` (parameters, BatchNorm statistics,
        optimizer state; replicated global arrays).

    Returns:
      The summary dict: ``test_accuracy``, ``test_loss``, ``train_loss``,
      ``train_accuracy`` (last logged), ``steps``, ``epochs``, ``images_per_s`` (training
      throughput after compilation), ``wall_time_s``, ``compile_time_s``,
      ``skipped_steps``, ``resumed_from_step``, ``num_devices``, ``num_processes``,
      ``peak_lr``, ``final_lr``, ``workdir``, ``status`` and ``config``; with
      ``return_state``, the pair ``(summary, state)``.

    Raises:
      ValueError: a bad config.
      NonFiniteError: NaN/Inf loss or gradients with ``nan_policy="stop"``.
      lars_jax.train.checkpoint.CheckpointError: checkpoints exist but none is usable.
    """
    t_start = time.perf_counter()
    config.validate()
    maybe_initialize_distributed(config)
    n_dev = config.num_devices or jax.device_count()
    config.validate(device_count=n_dev)
    if config.parallel == "pmap" and jax.process_count() > 1:
        raise ValueError("TrainConfig.parallel='pmap': multi-process runs need parallel='jit'")
    if config.parallel == "pmap" and n_dev > jax.local_device_count():
        raise ValueError(f"TrainConfig.num_devices={n_dev}: pmap uses local devices only "
                         f"({jax.local_device_count()})")
    lead = jax.process_index() == 0
    workdir = Path(config.workdir)
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / CONFIG_FILE, config.to_dict())

    if data is None:
        data = load_data(config)
    num_train = len(data.train_labels)
    if num_train < config.batch_size:
        raise ValueError(f"TrainConfig.batch_size={config.batch_size}: larger than the "
                         f"{num_train} training examples")
    spe = steps_per_epoch(config, num_train)
    total_steps = max(1, int(round(config.epochs * spe)))
    eval_every = int(round(config.eval_every_epochs * spe)) if config.eval_every_epochs else 0

    mesh = par.make_mesh(n_dev)
    devices = mesh.devices.tolist()
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    model = build_model(config, data.num_classes, axis_name=par.AXIS)
    eval_model = build_model(config, data.num_classes, axis_name=None)
    variables = init_variables(eval_model, config.seed, (1, *data.train_images.shape[1:]), dtype)
    schedule = learning_rate_schedule(config, spe, total_steps)
    tx = make_optimizer(config, learning_rate_shape(config, spe, total_steps))
    state = jax.jit(init_train_state, static_argnums=2)(
        variables["params"], variables.get("batch_stats", {}), tx)
    state = par.put_replicated(state, mesh)

    k = config.grad_accum_steps
    opts = StepOptions(
        num_classes=data.num_classes, axis_name=par.AXIS, num_devices=n_dev,
        grad_accum_steps=k, label_smoothing=config.label_smoothing,
        sync_batch_stats=not (config.bn_span == "global"),
        clars_granularity=config.clars_granularity if config.optimizer == "clars" else None,
        nan_policy=config.nan_policy, log_layer_stats=config.log_layer_stats,
        log_diagnostics=config.log_diagnostics, weight_decay=config.weight_decay,
        momentum=config.momentum)
    step_fn = make_train_step(model, tx, opts)
    prepare = par.make_prepare(seed=config.seed, batch_size=config.batch_size, mean=data.mean,
                               std=data.std, dtype=dtype, augment=_augment_kwargs(config))

    # Checkpoints: restore the newest usable one.
    meta = {f: getattr(config, f) for f in STRUCTURE_FIELDS}
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, meta=meta)
    start_step, resumed_from = 0, None
    if config.resume:
        restored = ckpt.restore_latest(state)
        if restored is not None:
            start_step, state = restored
            resumed_from = start_step
            if lead:
                print(f"lars_jax: resuming from step {start_step} ({ckpt.path(start_step)})",
                      file=sys.stderr, flush=True)
    else:
        ckpt.archive_existing()  # kept, and out of the way of the new run's checkpoints
    last_good = start_step if resumed_from is not None else None

    k_call = config.steps_per_call
    run_steps = None
    if config.parallel == "jit":
        run_step = par.jit_train_step(step_fn, prepare, mesh)
        if k_call > 1:
            run_steps = par.jit_train_steps(step_fn, prepare, mesh, k_call)
        to_host = lambda s: s
    else:
        run_step = par.pmap_train_step(step_fn, prepare, devices)
        state = par.replicate(jax.device_get(state), devices)
        to_host = par.unreplicate

    rep = par.replicated(mesh)
    images = par.put_global(data.train_images, rep)
    labels = par.put_global(data.train_labels, rep)
    eval_bs = max(n_dev, (min(config.eval_batch_size, len(data.test_labels)) // n_dev) * n_dev)
    eval_fn = make_eval_fn(eval_model, mesh, data.num_classes, data.mean, data.std, dtype)
    test_batches = _test_batches(data, eval_bs, mesh)

    writer = MetricsWriter(workdir, enabled=lead, tensorboard=config.tensorboard,
                           resume_step=resumed_from)
    bar = None
    if config.progress and lead:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                   desc=f"{config.model} {config.optimizer} B={config.batch_size}")

    def current_state():
        return to_host(state)

    def do_eval(step: int) -> dict[str, Any]:
        s = current_state()
        variables = {"params": s.params}
        if s.batch_stats:
            variables["batch_stats"] = s.batch_stats
        loss, acc = evaluate(eval_fn, variables, test_batches)
        row = writer.write({"kind": "eval", "step": step, "epoch": step / spe,
                            "test_loss": loss, "test_accuracy": acc})
        if bar is not None:
            bar.write(f"step {step} (epoch {step / spe:.2f}): test accuracy {acc:.4f}, "
                      f"test loss {loss:.4f}")
        return row

    def check_finite(step: int) -> None:
        s = current_state()
        bad = int(jax.device_get(s.nonfinite_step))
        if bad >= 0:
            where = (f"{ckpt.path(last_good)} (step {last_good})" if last_good is not None
                     else "none (the run had not checkpointed yet)")
            msg = (f"non-finite loss or gradients at step {bad}: training stopped "
                   f"(nan_policy='stop'). Last good checkpoint: {where}. Lower the learning "
                   f"rate, add warmup, or use nan_policy='skip'.")
            summary = {"status": "nonfinite", "nonfinite_step": bad,
                       "last_good_checkpoint_step": last_good, "config": config.to_dict()}
            if lead:
                write_json(workdir / SUMMARY_FILE, summary)
            raise NonFiniteError(msg)

    pending: list[tuple[bool, dict[str, Any]]] = []  # (from a multi-step call, metrics)
    last_train_row: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}
    compile_time = None
    compiled: set[bool] = set()  # kinds of call (multi-step or not) already compiled
    ckpt_every = config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else 0
    t_log = time.perf_counter()
    steps_since_log = 0
    train_time = 0.0  # seconds of timed training steps (compilation and pauses excluded)
    train_images = 0
    step = start_step
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            stop = next_stop(step, total_steps, config.log_every_steps, eval_every, ckpt_every)
            multi = run_steps is not None and step + k_call <= stop
            if multi:
                state, metrics = run_steps(state, images, labels, np.int32(step))
            else:
                state, metrics = run_step(state, images, labels, np.int32(step))
            done = k_call if multi else 1
            step += done
            steps_since_log += done
            pending.append((multi, metrics))
            if multi not in compiled:  # the first call of each kind compiles
                compiled.add(multi)
                jax.block_until_ready(metrics)
                compile_time = (compile_time or 0.0) + time.perf_counter() - t0
                t_log = time.perf_counter()
                steps_since_log = 0
            if bar is not None:
                bar.update(done)
            is_last = step == total_steps
            do_log = step % config.log_every_steps == 0 or is_last
            do_ev = is_last or (eval_every and step % eval_every == 0)
            do_ckpt = config.checkpoint_every_steps >= 0 and (
                is_last or (config.checkpoint_every_steps > 0
                            and step % config.checkpoint_every_steps == 0))
            if do_log:
                rows = []
                for was_multi, m in jax.device_get(pending):
                    rows += ([{key: v[i] for key, v in m.items()} for i in range(k_call)]
                             if was_multi else [m])
                dt = time.perf_counter() - t_log
                ips = steps_since_log * config.batch_size / dt if steps_since_log else None
                row = mean_rows(rows, ("loss", "accuracy", "finite"))
                row = {"kind": "train", "step": step, "epoch": step / spe, **row}
                if ips is not None:
                    row["images_per_s"] = ips
                    train_time += dt
                    train_images += steps_since_log * config.batch_size
                last_train_row = writer.write(row)
                pending, t_log, steps_since_log = [], time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}",
                                    lr=f"{row.get('lr', float('nan')):.3g}", refresh=False)
                check_finite(step)
            if do_ev or do_ckpt:
                if not do_log:
                    check_finite(step)
                t_pause = time.perf_counter()
                if do_ev:
                    last_eval = do_eval(step)
                if do_ckpt:
                    ckpt.save(step, current_state())
                    last_good = step
                t_log += time.perf_counter() - t_pause  # pauses do not count as training
    finally:
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()

    final = current_state()
    wall = time.perf_counter() - t_start
    summary = {
        "status": "ok",
        "test_accuracy": last_eval.get("test_accuracy"),
        "test_loss": last_eval.get("test_loss"),
        "train_loss": last_train_row.get("loss"),
        "train_accuracy": last_train_row.get("accuracy"),
        "steps": int(jax.device_get(final.step)),
        "epochs": total_steps / spe,
        "steps_per_epoch": spe,
        "images_per_s": train_images / train_time if train_time > 0 else None,
        "train_time_s": train_time,
        "wall_time_s": wall,
        "compile_time_s": compile_time,
        "skipped_steps": int(jax.device_get(final.skipped)),
        "resumed_from_step": resumed_from,
        "num_devices": n_dev,
        "num_processes": jax.process_count(),
        "peak_lr": float(schedule(max(int(round(config.warmup_epochs * spe)), 0)))
        if config.schedule != "onecycle" else None,
        "final_lr": last_train_row.get("lr"),
        "workdir": str(workdir),
        "config": config.to_dict(),
    }
    if lead:
        write_json(workdir / SUMMARY_FILE, summary)
        print(format_summary(summary), flush=True)
    if config.plot and lead:
        try:
            from lars_jax.plotting import plot_run
        except ImportError as e:
            print(f"lars_jax: no plot ({e})", file=sys.stderr)
        else:
            try:
                plot_run(workdir)
            except Exception as e:  # a failed plot must not fail a finished run
                print(f"lars_jax: plotting failed: {type(e).__name__}: {e}", file=sys.stderr)
    return (summary, final) if return_state else summary


def format_summary(s: dict[str, Any]) -> str:
    """A few human-readable lines for the end of a run."""
    c = s["config"]
    acc = s.get("test_accuracy")
    ips = s.get("images_per_s")
    lines = [
        f"== {c['model']} on {c['dataset']} with {c['optimizer']}, batch {c['batch_size']}, "
        f"{s['epochs']:.3g} epochs ({s['steps']} steps) on {s['num_devices']} device(s)",
        f"   test accuracy {acc:.4f}, test loss {s['test_loss']:.4f}" if acc is not None
        else "   no evaluation",
        f"   wall time {s['wall_time_s']:.1f} s (compile {s['compile_time_s'] or 0:.1f} s), "
        + (f"{ips:.1f} images/s" if ips else "throughput n/a"),
        f"   metrics: {Path(s['workdir']) / 'metrics.jsonl'}",
    ]
    if s.get("skipped_steps"):
        lines.insert(2, f"   skipped non-finite steps: {s['skipped_steps']}")
    return "\n".join(lines)
