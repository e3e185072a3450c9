"""Learning-rate rules for large batches and the schedules used with LARS.

Scaling rules (plain floats)::

    linear_scaling:  lr = base_lr * B / B_0                  (Goyal et al. 2017)
    sqrt_scaling:    lr = base_lr * sqrt(B / B_0)            (noise-dominated layers)

Schedules (optax schedules: ``step -> lr``, usable with any optax optimizer)::

    gradual_warmup:        start_lr -> peak_lr linearly over warmup_steps, then `after`
    mlperf_lars_schedule:  0 -> peak_lr linearly over warmup_steps, then
                           (peak_lr - end_lr) * (1 - s / decay_steps)^power + end_lr,
                           decay_steps = total - warmup (the MLPerf references: + 1)

MLPerf step counting (plain ints)::

    mlperf_total_steps:    epochs / r * ceil(r * N / B)   (r = 1: the reference; 4: Google)
    mlperf_decay_steps:    total - warmup + 1
    piecewise_linear:      linear interpolation through (boundaries[i], values[i])
    onecycle:              optax's cosine (two-phase) or linear (three-phase) 1cycle

Every function checks its inputs and raises ValueError naming the bad argument.

References:
  Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
  <https://arxiv.org/abs/1706.02677>`_, 2017 (linear scaling, gradual warmup).

  You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
  <https://arxiv.org/abs/1708.03888>`_, 2017 (polynomial decay, power 2).

  MLPerf Training ResNet-50 LARS reference (mlcommons/training,
  image_classification/tensorflow2: ``lars_util.PolynomialDecayWithWarmup`` and
  ``common.get_num_train_iterations``): steps per epoch ``ceil(N / B)`` when the remainder
  is kept, linear warmup from 0, polynomial decay of power 2 to 1e-4 over
  ``total - warmup + 1`` steps. Google's MLPerf Training v0.7 JAX submission
  (mlcommons/training_results_v0.7, resnet-research-JAX ``train.py``) uses the same decay
  and rounds up the steps of each 4-epoch block between evaluations.

  Page, `How to train your ResNet <https://myrtle.ai/how-to-train-your-resnet/>`_, 2018
  (piecewise-linear 0 -> 0.4 over 5 epochs, then linearly to 0).

  Smith, Topin, `Super-Convergence <https://arxiv.org/abs/1708.07120>`_, 2017 (1cycle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax


def _check_number(name: str, value: float, *, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a number, got {value!r}.") from e
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be finite and {bound}, got {value!r}.")
    return v


def _check_steps(name: str, value: int, *, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer, got {value!r}.")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be {bound}, got {value!r}.")
    return int(value)


def linear_scaling(base_lr: float, batch_size: int, base_batch_size: int = 256) -> float:
    """Linear scaling rule: ``base_lr * batch_size / base_batch_size``.

    Args:
      base_lr: the rate tuned at ``base_batch_size`` (``>= 0``).
      batch_size: the global batch size (``> 0``).
      base_batch_size: the batch size ``base_lr`` belongs to (``> 0``, default 256).

    Returns:
      The scaled learning rate (a float).

    Raises:
      ValueError: naming the first bad argument.

    Examples:
      >>> linear_scaling(0.1, 8192)
      3.2

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """
    lr = _check_number("base_lr", base_lr)
    b = _check_steps("batch_size", batch_size, positive=True)
    b0 = _check_steps("base_batch_size", base_batch_size, positive=True)
    return lr * b / b0


def sqrt_scaling(base_lr: float, batch_size: int, base_batch_size: int = 256) -> float:
    """Square-root scaling rule: ``base_lr * sqrt(batch_size / base_batch_size)``.

    Keeps the per-step noise of SGD constant when gradients are noise dominated
    (``||g|| ~ 1/sqrt(B)``); see Page, *How to train your ResNet* part 6, for when it applies.

    Args:
      base_lr: the rate tuned at ``base_batch_size`` (``>= 0``).
      batch_size: the global batch size (``> 0``).
      base_batch_size: the batch size ``base_lr`` belongs to (``> 0``, default 256).

    Returns:
      The scaled learning rate (a float).

    Raises:
      ValueError: naming the first bad argument.

    Examples:
      >>> sqrt_scaling(0.1, 1024)
      0.2

    References:
      Krizhevsky, `One weird trick for parallelizing convolutional neural networks
      <https://arxiv.org/abs/1404.5997>`_, 2014.

      Page, `How to train your ResNet <https://myrtle.ai/how-to-train-your-resnet/>`_,
      2018.
    """
    lr = _check_number("base_lr", base_lr)
    b = _check_steps("batch_size", batch_size, positive=True)
    b0 = _check_steps("base_batch_size", base_batch_size, positive=True)
    return lr * math.sqrt(b / b0)


def gradual_warmup(
    start_lr: float,
    peak_lr: float,
    warmup_steps: int,
    after: optax.Schedule | None = None,
) -> optax.Schedule:
    """Goyal et al.'s gradual warmup, then any schedule.

    ``lr(t) = start_lr + (peak_lr - start_lr) * t / warmup_steps`` for
    ``t < warmup_steps``, then ``after(t - warmup_steps)`` (or ``peak_lr`` when
    ``after`` is None). Goyal et al. start at the small-batch rate (e.g. 0.1) and reach
    the linearly scaled one (``k * 0.1``) after 5 epochs.

    Args:
      start_lr: the rate at step 0 (``>= 0``).
      peak_lr: the rate reached at ``warmup_steps`` (``>= 0``).
      warmup_steps: length of the warmup (``>= 0``; 0 means no warmup).
      after: an optax schedule counted from the end of the warmup, e.g.
        ``optax.piecewise_constant_schedule(peak_lr, {30 * epoch: 0.1, ...})``.

    Returns:
      An optax schedule.

    Raises:
      ValueError: naming the first bad argument.

    Examples:
      >>> sched = gradual_warmup(0.1, 3.2, warmup_steps=10)
      >>> print(f"{float(sched(0)):.2f} {float(sched(5)):.2f} {float(sched(50)):.2f}")
      0.10 1.65 3.20

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """
    start = _check_number("start_lr", start_lr)
    peak = _check_number("peak_lr", peak_lr)
    steps = _check_steps("warmup_steps", warmup_steps)
    if after is not None and not callable(after):
        raise ValueError(f"`after` must be None or an optax schedule, got {after!r}.")
    if after is not None:
        _check_number("after", float(after(0)))
    rest = after if after is not None else optax.constant_schedule(peak)
    if steps == 0:
        return rest
    warm = optax.linear_schedule(start, peak, steps)
    return optax.join_schedules([warm, rest], [steps])


def mlperf_lars_schedule(
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    end_lr: float = 1e-4,
    power: float = 2.0,
    decay_steps: int | None = None,
) -> optax.Schedule:
    """MLPerf's LARS schedule: linear warmup from 0, then polynomial decay.

    ``lr(t) = peak_lr * t / warmup_steps`` for ``t < warmup_steps``, then
    ``(peak_lr - end_lr) * (1 - (t - warmup_steps) / decay_steps)**power + end_lr``, and
    ``end_lr`` from ``warmup_steps + decay_steps`` on. ``decay_steps`` defaults to
    ``total_steps - warmup_steps`` (``end_lr`` reached at ``total_steps``); the MLPerf
    references decay over ``total_steps - warmup_steps + 1`` (:func:`mlperf_decay_steps`),
    so their last step's rate is still above ``end_lr``. MLPerf ResNet-50 uses power 2,
    end 1e-4 and, for example, peak 10 with 5 warmup epochs below batch 16k (Google's
    MLPerf Training v0.7 JAX submission).

    Args:
      peak_lr: the rate at the end of warmup (``>= 0``).
      warmup_steps: warmup length (``>= 0``, ``< total_steps``).
      total_steps: the run's length (``> 0``); ``end_lr`` is reached there unless
        ``decay_steps`` says otherwise.
      end_lr: the final rate (``>= 0``).
      power: exponent of the decay (``> 0``).
      decay_steps: length of the decay (``> 0``; None: ``total_steps - warmup_steps``).

    Returns:
      An optax schedule.

    Raises:
      ValueError: naming the first bad argument.

    Examples:
      >>> sched = mlperf_lars_schedule(10.0, warmup_steps=5, total_steps=25)
      >>> print([f"{float(sched(t)):.3g}" for t in (0, 1, 5, 15, 25, 99)])
      ['0', '2', '10', '2.5', '0.0001', '0.0001']
      >>> ref = mlperf_lars_schedule(10.0, 5, 25, decay_steps=mlperf_decay_steps(25, 5))
      >>> print(f"{float(ref(24)):.4f}")  # (10 - 1e-4) * (2 / 21)**2 + 1e-4
      0.0908

    References:
      MLPerf Training ResNet-50 LARS reference (mlcommons/training,
      image_classification/tensorflow2/lars_util.py); Google's v0.7 JAX submission
      (mlcommons/training_results_v0.7).

      You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.
    """
    peak = _check_number("peak_lr", peak_lr)
    warm = _check_steps("warmup_steps", warmup_steps)
    total = _check_steps("total_steps", total_steps, positive=True)
    end = _check_number("end_lr", end_lr)
    pw = _check_number("power", power, positive=True)
    if warm >= total:
        raise ValueError(
            f"`warmup_steps` ({warm}) must be smaller than `total_steps` ({total})."
        )
    decay_len = (total - warm if decay_steps is None
                 else _check_steps("decay_steps", decay_steps, positive=True))
    decay = optax.polynomial_schedule(peak, end, pw, transition_steps=decay_len)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def mlperf_total_steps(num_examples: int, batch_size: int, epochs: int,
                       epochs_per_round: int = 1) -> int:
    """Steps of an MLPerf run that keeps every epoch's remainder batch.

    ``epochs / epochs_per_round * ceil(epochs_per_round * num_examples / batch_size)``: the
    steps of each round of ``epochs_per_round`` epochs are rounded up, so no example is
    dropped. The MLPerf reference (and NVIDIA's submissions) round up every epoch
    (``epochs_per_round=1``, which also gives the steps per epoch with ``epochs=1``);
    Google's v0.7 JAX submission rounds up each 4-epoch block between evaluations
    (``epochs_per_round=4``).

    Args:
      num_examples: training examples per epoch (``> 0``; ImageNet: 1,281,167).
      batch_size: global batch size (``> 0``).
      epochs: epochs of the run (``> 0``, a multiple of ``epochs_per_round``).
      epochs_per_round: epochs counted together before rounding up (``> 0``).

    Returns:
      The number of optimizer steps.

    Raises:
      ValueError: naming the first bad argument.

    Examples:
      >>> mlperf_total_steps(1_281_167, 3200, 1)  # steps per epoch: 400 full + 1 partial
      401
      >>> mlperf_total_steps(1_281_167, 3200, 56), mlperf_total_steps(1_281_167, 3200, 56, 4)
      (22456, 22428)

    References:
      MLPerf Training reference, mlcommons/training image_classification/tensorflow2
      ``common.get_num_train_iterations`` (remainder kept: ``ceil``); Google's v0.7 JAX
      submission ``train.py`` (``steps_per_loop = ceil(4 * N / B)``).
    """
    n = _check_steps("num_examples", num_examples, positive=True)
    b = _check_steps("batch_size", batch_size, positive=True)
    e = _check_steps("epochs", epochs, positive=True)
    r = _check_steps("epochs_per_round", epochs_per_round, positive=True)
    if e % r:
        raise ValueError(f"`epochs` ({e}) must be a multiple of `epochs_per_round` ({r}).")
    return e // r * -(-(r * n) // b)


def mlperf_decay_steps(total_steps: int, warmup_steps: int) -> int:
    """The MLPerf references' decay length: ``total_steps - warmup_steps + 1``.

    Pass it as ``decay_steps`` to :func:`mlperf_lars_schedule` to get the references' rate
    at every step.

    Args:
      total_steps: steps of the run (``> 0``).
      warmup_steps: warmup steps (``>= 0``, ``< total_steps``).

    Returns:
      The number of decay steps.

    Raises:
      ValueError: naming the first bad argument.

    Examples:
      >>> mlperf_decay_steps(22456, 5 * 401)
      20452

    References:
      MLPerf Training reference, ``lars_util.PolynomialDecayWithWarmup``
      (``decay_steps = train_steps - warmup_steps + 1``); Google's v0.7 JAX submission,
      ``polynomial_learning_rate_fn`` (the same).
    """
    total = _check_steps("total_steps", total_steps, positive=True)
    warm = _check_steps("warmup_steps", warmup_steps)
    if warm >= total:
        raise ValueError(
            f"`warmup_steps` ({warm}) must be smaller than `total_steps` ({total})."
        )
    return total - warm + 1


def piecewise_linear(boundaries: Sequence[float], values: Sequence[float]) -> optax.Schedule:
    """Linear interpolation through the points ``(boundaries[i], values[i])``.

    Constant before the first and after the last boundary. Page's ResNet schedule
    (0 -> 0.4 over 5 epochs, then linearly to 0 at epoch 24) is
    ``piecewise_linear([0, 5 * E, 24 * E], [0.0, 0.4, 0.0])`` with ``E`` steps/epoch.

    Args:
      boundaries: strictly increasing steps (at least one).
      values: learning rates ``>= 0``, one per boundary.

    Returns:
      An optax schedule.

    Raises:
      ValueError: naming ``boundaries`` or ``values``.

    Examples:
      >>> sched = piecewise_linear([0, 5, 24], [0.0, 0.4, 0.0])
      >>> print([f"{float(sched(t)):.2f}" for t in (0, 1, 5, 14.5, 24, 30)])
      ['0.00', '0.08', '0.40', '0.20', '0.00', '0.00']

    References:
      Page, `How to train your ResNet <https://myrtle.ai/how-to-train-your-resnet/>`_,
      2018.
    """
    b = np.asarray(boundaries, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if b.ndim != 1 or b.size == 0 or not np.all(np.isfinite(b)):
        raise ValueError(f"`boundaries` must be a non-empty 1-D list of steps, got {boundaries!r}.")
    if np.any(np.diff(b) <= 0):
        raise ValueError(f"`boundaries` must be strictly increasing, got {boundaries!r}.")
    if v.shape != b.shape:
        raise ValueError(
            f"`values` must have one entry per boundary ({b.size}), got {len(v)}."
        )
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"`values` must be finite and >= 0, got {values!r}.")
    bj, vj = jnp.asarray(b, jnp.float32), jnp.asarray(v, jnp.float32)

    def schedule(count):
        return jnp.interp(jnp.asarray(count, jnp.float32), bj, vj)

    return schedule


def onecycle(
    total_steps: int,
    peak_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    kind: str = "cosine",
    pct_final: float = 0.85,
) -> optax.Schedule:
    """Smith's 1cycle schedule, from optax.

    ``kind="cosine"``: :func:`optax.cosine_onecycle_schedule` (rise from
    ``peak_lr / div_factor`` to ``peak_lr`` over ``pct_start`` of the steps, then a
    cosine fall to ``peak_lr / (div_factor * final_div_factor)``).
    ``kind="linear"``: :func:`optax.linear_onecycle_schedule` (three linear phases:
    up until ``pct_start``, back down until ``pct_final``, then the final anneal).

    Args:
      total_steps: length of the cycle (``> 0``).
      peak_lr: maximum rate (``>= 0``).
      pct_start: fraction of the steps spent rising, in ``(0, 1)``.
      div_factor: start rate is ``peak_lr / div_factor`` (``> 0``).
      final_div_factor: final rate is ``start / final_div_factor`` (``> 0``).
      kind: ``"cosine"`` or ``"linear"``.
      pct_final: end of the second phase for ``kind="linear"``, in ``(pct_start, 1]``.

    Returns:
      An optax schedule.

    Raises:
      ValueError: naming the first bad argument.

    Examples:
      >>> sched = onecycle(100, peak_lr=1.0)
      >>> print(f"{float(sched(0)):.2f} {float(sched(30)):.2f} {float(sched(100)):.0e}")
      0.04 1.00 4e-06

    References:
      Smith, Topin, `Super-Convergence <https://arxiv.org/abs/1708.07120>`_, 2017.
    """
    steps = _check_steps("total_steps", total_steps, positive=True)
    peak = _check_number("peak_lr", peak_lr)
    start = _check_number("pct_start", pct_start, positive=True)
    if start >= 1:
        raise ValueError(f"`pct_start` must be in (0, 1), got {pct_start!r}.")
    div = _check_number("div_factor", div_factor, positive=True)
    fdiv = _check_number("final_div_factor", final_div_factor, positive=True)
    if kind == "cosine":
        return optax.cosine_onecycle_schedule(steps, peak, start, div, fdiv)
    if kind == "linear":
        final = _check_number("pct_final", pct_final, positive=True)
        if not start < final <= 1:
            raise ValueError(f"`pct_final` must be in (pct_start, 1], got {pct_final!r}.")
        return optax.linear_onecycle_schedule(steps, peak, start, final, div, fdiv)
    raise ValueError(f"`kind` must be 'cosine' or 'linear', got {kind!r}.")
