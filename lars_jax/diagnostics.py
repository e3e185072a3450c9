"""Training diagnostics: per-layer weight-norm dynamics and the gradient noise scale.

Two groups of pure JAX functions, both cheap enough to run inside a jitted train step:

* :func:`layer_diagnostics` computes, per weight tensor and *before* the update is
  applied, the quantities of Page's weight-decay analysis ("How to train your
  ResNet 6"): ``|w|^2``, ``|g|^2``, the per-step shrink of ``|w|^2`` caused by weight
  decay, its growth caused by the gradient step, ``lr*|g|/|w|`` and the cosine between
  the current gradient ``g_t`` and the momentum buffer ``v_{t-1}`` found in an Optax
  optimizer state.
* :func:`noise_scale_estimates`, :func:`noise_scale_init` / :func:`noise_scale_update`
  and :func:`noise_scale_from_rows` implement the unbiased two-batch estimators of
  McCandlish et al. for ``|G|^2`` and ``tr(Sigma)`` and the "simple" gradient noise
  scale ``B_simple = tr(Sigma) / |G|^2``, averaging numerator and denominator
  separately (exponential moving averages) before dividing.

Page's equilibrium (plain SGD, weight decay applied as ``w <- (1 - lr*wd) w`` followed by
the gradient step ``w <- w - lr*g``, scale-invariant weights so that ``w . g = 0``)::

    shrink = |w|^2 - |(1 - lr*wd) w|^2 = lr*wd*(2 - lr*wd) * |w|^2        (exact)
    growth = |w - lr*g|^2 - |w|^2       = lr^2 * |g|^2                      (exact if w.g=0)
    shrink == growth  <=>  |w|^2 / |g|^2 = lr / (wd * (2 - lr*wd))  ~  lr / (2*wd)

With heavy-ball momentum ``rho`` each gradient is applied over its lifetime with the
effective rate ``lr / (1 - rho)``; :func:`layer_diagnostics` uses that effective rate
in ``wd_shrink`` and ``grad_growth`` (Page's argument, which also assumes successive
gradients are uncorrelated: ``cos_g_v`` measures that assumption).

References:
  Page, "How to train your ResNet 6: weight decay", Myrtle.ai blog, 2019.
  McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training",
  arXiv:1812.06162, 2018 (appendix A: the two-batch estimators).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "NoiseScaleAverage",
    "NoiseScaleEstimate",
    "NoiseScaleState",
    "find_momentum_buffer",
    "layer_diagnostics",
    "noise_scale_average",
    "noise_scale_estimates",
    "noise_scale_from_norms",
    "noise_scale_from_sqnorms",
    "noise_scale_from_rows",
    "noise_scale_init",
    "noise_scale_series",
    "noise_scale_update",
    "page_equilibrium_ratio",
    "page_lars_rate",
    "path_to_name",
]

_EPS = 1e-30


def _real_f32(x: Any) -> jax.Array:
    """``x`` in float32; a complex tensor as the real vector of its real and imaginary parts.

    Sums of squares and dot products of that vector are ``sum |x|^2`` and ``Re <x, y>``:
    the norms and cosines of complex tensors, never their real parts alone.
    """
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        x = jnp.stack([x.real, x.imag])
    return x.astype(jnp.float32)


# --------------------------------------------------------------------------------------
# Per-layer weight-norm dynamics (Page)
# --------------------------------------------------------------------------------------


def path_to_name(path: tuple[Any, ...]) -> str:
    """Joins a pytree key path into a ``"a/b/c"`` name.

    Args:
      path: a key path as returned by ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The keys joined with ``/`` (dict keys, attribute names and sequence indices).

    Example:
      >>> import jax
      >>> leaves, _ = jax.tree_util.tree_flatten_with_path({"Conv_0": {"kernel": 1.0}})
      >>> path_to_name(leaves[0][0])
      'Conv_0/kernel'

    References:
      JAX documentation, "Working with pytrees: key paths".
    """
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(str(key.name))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:  # pragma: no cover - future key types
            parts.append(str(key))
    return "/".join(parts)


def _is_trace_like(x: Any) -> bool:
    return isinstance(x, optax.TraceState) or (
        isinstance(x, tuple) and hasattr(x, "_fields") and "trace" in getattr(x, "_fields", ())
    )


def find_momentum_buffer(opt_state: Any) -> Any | None:
    """Finds the momentum buffer (an ``optax.trace`` accumulator) in an optimizer state.

    Searches through ``optax.chain`` tuples, ``optax.masked`` and
    ``optax.inject_hyperparams`` wrappers (any nesting) for the first state that is an
    :class:`optax.TraceState` or another NamedTuple with a ``trace`` field.

    Args:
      opt_state: the state returned by ``optimizer.init`` / ``optimizer.update``.

    Returns:
      The ``trace`` pytree (same structure as the parameters, possibly with
      ``optax.MaskedNode`` leaves), or ``None`` when the optimizer keeps no momentum.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> state = optax.sgd(0.1, momentum=0.9).init({"w": jnp.ones(2)})
      >>> find_momentum_buffer(state)
      {'w': Array([0., 0.], dtype=float32)}

    References:
      Optax source, ``optax.trace`` and ``optax.TraceState``.
    """
    found = [
        x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_trace_like)
        if _is_trace_like(x)
    ]
    if not found:
        return None
    return found[0].trace


def page_equilibrium_ratio(learning_rate: float, weight_decay: float) -> float:
    """Page's equilibrium ``|w|^2 / |g|^2`` for plain SGD with weight decay.

    Args:
      learning_rate: the SGD learning rate ``lr`` (> 0).
      weight_decay: the weight decay ``wd`` (> 0), applied as ``w <- (1 - lr*wd) w``.

    Returns:
      ``lr / (wd * (2 - lr*wd))``, the value at which the weight-decay shrink of
      ``|w|^2`` equals the growth ``lr^2 |g|^2`` of a gradient orthogonal to ``w``.

    Example:
      >>> round(page_equilibrium_ratio(0.1, 5e-4), 3)
      100.003

    References:
      Page, "How to train your ResNet 6: weight decay", 2019, equation (3).
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if weight_decay <= 0:
        raise ValueError(f"weight_decay must be > 0, got {weight_decay}")
    if learning_rate * weight_decay >= 2:
        raise ValueError(
            f"learning_rate*weight_decay must be < 2, got {learning_rate * weight_decay}"
        )
    return learning_rate / (weight_decay * (2.0 - learning_rate * weight_decay))


def page_lars_rate(learning_rate: float, weight_decay: float, momentum: float = 0.0) -> float:
    """Page's predicted lifetime step ``lr*|g| / ((1-rho)*|w|) = sqrt(2*lr*wd/(1-rho))``.

    For ``momentum = 0`` this is ``sqrt(2*lr*wd)``, the LARS learning rate to which SGD
    with weight decay is equivalent at equilibrium.

    Args:
      learning_rate: the learning rate ``lr`` (>= 0).
      weight_decay: the weight decay ``wd`` (>= 0).
      momentum: the heavy-ball momentum ``rho`` in ``[0, 1)``.

    Returns:
      ``sqrt(2 * lr * wd / (1 - rho))``.

    Example:
      >>> round(page_lars_rate(0.4, 5e-4), 4)
      0.02

    References:
      Page, "How to train your ResNet 6: weight decay", 2019, equations (5) and (8).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if learning_rate < 0 or weight_decay < 0:
        raise ValueError(
            f"learning_rate and weight_decay must be >= 0, got {learning_rate}, {weight_decay}"
        )
    return math.sqrt(2.0 * learning_rate * weight_decay / (1.0 - momentum))


def layer_diagnostics(
    params: Any,
    grads: Any,
    opt_state: Any = None,
    learning_rate: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    momentum: jax.typing.ArrayLike = 0.0,
    *,
    min_ndim: int = 2,
    updates: Any = None,
) -> dict[str, jax.Array]:
    """Per-layer scalars of Page's weight-norm analysis, computed before the update.

    For every parameter tensor with ``ndim >= min_ndim`` (by default: kernels, not
    biases or BatchNorm scales) the returned dict holds, under ``"<layer path>/<name>"``:

    * ``w_sqnorm``: ``|w|^2``.
    * ``g_sqnorm``: ``|g|^2`` (``g``: the mini-batch gradient of the loss, without
      weight decay).
    * ``wd_shrink``: ``lr_e*wd*(2 - lr_e*wd) * |w|^2`` with ``lr_e = lr / (1 - rho)``:
      the decrease of ``|w|^2`` from the decay ``w <- (1 - lr_e*wd) w`` (exact for plain
      SGD, ``rho = 0``; the lifetime effect of one step's decay with momentum).
    * ``grad_growth``: ``lr_e^2 * |g|^2``, the increase of ``|w|^2`` from the gradient
      step when ``w . g = 0`` (scale-invariant weights), lifetime form with momentum.
    * ``lr_g_over_w``: ``lr * |g| / |w|`` (compare with
      ``(1 - rho) * page_lars_rate(lr, wd, rho)``).
    * ``cos_w_g``: cosine between ``w`` and ``g`` (0 for scale-invariant weights).
    * ``cos_g_v``: cosine between ``g_t`` and the momentum buffer ``v_{t-1}`` found in
      ``opt_state`` (only when a buffer exists; 0 while the buffer is zero).
    * with ``updates`` (the update about to be added to ``params``): ``update_sqnorm``
      ``|u|^2`` and ``actual_dw_sqnorm`` ``|w + u|^2 - |w|^2``, the measured change.

    All quantities are float32 scalars; the function is jit-compatible and never divides
    by zero (a zero norm gives a zero ratio or cosine).

    Args:
      params: the parameters ``w_t`` (any pytree of arrays).
      grads: the gradients ``g_t``, same structure as ``params``.
      opt_state: the optimizer state *before* this step's update (holds ``v_{t-1}``),
        or ``None``.
      learning_rate: the learning rate of this step (scalar, may be traced).
      weight_decay: the weight decay coefficient (scalar).
      momentum: the heavy-ball momentum ``rho`` (scalar in ``[0, 1)``).
      min_ndim: tensors with fewer dimensions are skipped.
      updates: optional pytree of updates ``u`` with ``w_{t+1} = w_t + u``.

    Returns:
      A flat ``dict`` mapping ``"layer/path/quantity"`` to scalar arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> d = layer_diagnostics({"k": jnp.ones((2, 2))}, {"k": jnp.ones((2, 2))},
      ...                       learning_rate=0.1, weight_decay=0.5)
      >>> float(d["k/w_sqnorm"]), round(float(d["k/wd_shrink"]), 4)
      (4.0, 0.39)

    References:
      Page, "How to train your ResNet 6: weight decay", Myrtle.ai blog, 2019.
    """
    if min_ndim < 0:
        raise ValueError(f"min_ndim must be >= 0, got {min_ndim}")
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(grads):
        raise ValueError("grads must have the same pytree structure as params")
    if isinstance(momentum, (int, float)) and not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")

    lr = jnp.asarray(learning_rate, jnp.float32)
    wd = jnp.asarray(weight_decay, jnp.float32)
    rho = jnp.asarray(momentum, jnp.float32)
    lr_e = lr / (1.0 - rho)

    flat_p, treedef = jax.tree_util.tree_flatten_with_path(params)
    flat_g = treedef.flatten_up_to(grads)
    flat_u = treedef.flatten_up_to(updates) if updates is not None else [None] * len(flat_p)
    trace = find_momentum_buffer(opt_state) if opt_state is not None else None
    if trace is not None:
        flat_v = treedef.flatten_up_to(trace)
    else:
        flat_v = [None] * len(flat_p)

    out: dict[str, jax.Array] = {}
    for (path, w), g, v, u in zip(flat_p, flat_g, flat_v, flat_u, strict=True):
        if not hasattr(w, "ndim") or w.ndim < min_ndim:
            continue
        name = path_to_name(path)
        w32 = _real_f32(w)
        g32 = _real_f32(g)
        w2 = jnp.sum(jnp.square(w32))
        g2 = jnp.sum(jnp.square(g32))
        wn = jnp.sqrt(w2)
        gn = jnp.sqrt(g2)
        out[f"{name}/w_sqnorm"] = w2
        out[f"{name}/g_sqnorm"] = g2
        out[f"{name}/wd_shrink"] = lr_e * wd * (2.0 - lr_e * wd) * w2
        out[f"{name}/grad_growth"] = jnp.square(lr_e) * g2
        out[f"{name}/lr_g_over_w"] = jnp.where(wn > 0, lr * gn / jnp.maximum(wn, _EPS), 0.0)
        wg = jnp.sum(w32 * g32)
        out[f"{name}/cos_w_g"] = jnp.where(
            (wn > 0) & (gn > 0), wg / jnp.maximum(wn * gn, _EPS), 0.0
        )
        if v is not None and hasattr(v, "shape") and v.shape == w.shape:
            v32 = _real_f32(v)
            vn = jnp.sqrt(jnp.sum(jnp.square(v32)))
            out[f"{name}/cos_g_v"] = jnp.where(
                (vn > 0) & (gn > 0), jnp.sum(g32 * v32) / jnp.maximum(vn * gn, _EPS), 0.0
            )
        if u is not None:
            u32 = _real_f32(u)
            out[f"{name}/update_sqnorm"] = jnp.sum(jnp.square(u32))
            # |w + u|^2 - |w|^2 without cancellation
            out[f"{name}/actual_dw_sqnorm"] = 2.0 * jnp.sum(w32 * u32) + jnp.sum(jnp.square(u32))
    return out


# --------------------------------------------------------------------------------------
# Gradient noise scale (McCandlish et al.)
# --------------------------------------------------------------------------------------


def _check_batches(batch_small: Any, batch_big: Any) -> None:
    if isinstance(batch_small, (int, float)) and batch_small <= 0:
        raise ValueError(f"batch_small must be > 0, got {batch_small}")
    if isinstance(batch_small, (int, float)) and isinstance(batch_big, (int, float)):
        if batch_big <= batch_small:
            raise ValueError(
                f"batch_big must be > batch_small, got batch_big={batch_big}, "
                f"batch_small={batch_small}"
            )


def noise_scale_estimates(
    grad_sqnorm_small: jax.typing.ArrayLike,
    grad_sqnorm_big: jax.typing.ArrayLike,
    batch_small: jax.typing.ArrayLike,
    batch_big: jax.typing.ArrayLike,
) -> tuple[jax.Array, jax.Array]:
    """Unbiased two-batch estimates of ``|G|^2`` and ``tr(Sigma)``.

    With ``E|G_B|^2 = |G|^2 + tr(Sigma)/B`` for the mean gradient ``G_B`` of ``B``
    independent examples::

        |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
        tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

    ``grad_sqnorm_small`` may be the mean, over the ``k`` groups of a data-parallel (or
    gradient-accumulation) step, of each group gradient's squared norm, with
    ``batch_big = k * batch_small`` and ``grad_sqnorm_big`` the squared norm of the mean
    gradient: both estimators stay unbiased. Single estimates are noisy (``|G|^2`` can
    be negative); average them (:func:`noise_scale_update`) before dividing.

    Args:
      grad_sqnorm_small: ``|G_small|^2`` (scalar or array of steps).
      grad_sqnorm_big: ``|G_big|^2``, same shape.
      batch_small: examples behind one small-batch gradient.
      batch_big: examples behind the big-batch gradient (``> batch_small``).

    Returns:
      ``(grad_sqnorm_estimate, trace_sigma_estimate)``.

    Example:
      >>> g2, s = noise_scale_estimates(2.0, 1.25, 4, 16)  # |G|^2=1, tr(Sigma)=4
      >>> float(g2), float(s)
      (1.0, 4.0)

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", 2018, appendix A.1.
    """
    _check_batches(batch_small, batch_big)
    s2 = jnp.asarray(grad_sqnorm_small, jnp.float32)
    b2 = jnp.asarray(grad_sqnorm_big, jnp.float32)
    bs = jnp.asarray(batch_small, jnp.float32)
    bb = jnp.asarray(batch_big, jnp.float32)
    g2 = (bb * b2 - bs * s2) / (bb - bs)
    trace = (s2 - b2) / (1.0 / bs - 1.0 / bb)
    return g2, trace


class NoiseScaleState(NamedTuple):
    """EMA state of the two-batch noise-scale estimator.

    Attributes:
      grad_sqnorm: EMA of the ``|G|^2`` estimates (not bias corrected).
      trace_sigma: EMA of the ``tr(Sigma)`` estimates (not bias corrected).
      count: number of updates so far.
    """

    grad_sqnorm: jax.Array
    trace_sigma: jax.Array
    count: jax.Array


def noise_scale_init() -> NoiseScaleState:
    """Returns the empty :class:`NoiseScaleState`.

    Example:
      >>> noise_scale_init().count
      Array(0, dtype=int32)

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", 2018.
    """
    zero = jnp.zeros((), jnp.float32)
    return NoiseScaleState(zero, zero, jnp.zeros((), jnp.int32))


def noise_scale_update(
    state: NoiseScaleState,
    grad_sqnorm_small: jax.typing.ArrayLike,
    grad_sqnorm_big: jax.typing.ArrayLike,
    batch_small: jax.typing.ArrayLike,
    batch_big: jax.typing.ArrayLike,
    decay: float = 0.95,
) -> tuple[NoiseScaleState, jax.Array]:
    """Adds one step's estimates to the EMAs and returns ``B_simple``.

    The numerator ``tr(Sigma)`` and denominator ``|G|^2`` are averaged separately; the
    EMAs share the same (zero-start) bias, which cancels in the ratio. When the averaged
    ``|G|^2`` is not positive (noise dominates, no estimate possible yet) the returned
    ``B_simple`` is ``+inf``, never NaN.

    Args:
      state: the previous :class:`NoiseScaleState`.
      grad_sqnorm_small: this step's ``|G_small|^2``.
      grad_sqnorm_big: this step's ``|G_big|^2``.
      batch_small: small batch size.
      batch_big: big batch size.
      decay: EMA decay in ``[0, 1)``.

    Returns:
      ``(new_state, b_simple)``.

    Example:
      >>> state, b = noise_scale_update(noise_scale_init(), 2.0, 1.25, 4, 16)
      >>> float(b)
      4.0

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", 2018, appendix A.1.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    g2, tr = noise_scale_estimates(grad_sqnorm_small, grad_sqnorm_big, batch_small, batch_big)
    new = NoiseScaleState(
        grad_sqnorm=decay * state.grad_sqnorm + (1.0 - decay) * g2,
        trace_sigma=decay * state.trace_sigma + (1.0 - decay) * tr,
        count=state.count + 1,
    )
    b_simple = jnp.where(
        new.grad_sqnorm > 0, new.trace_sigma / jnp.maximum(new.grad_sqnorm, _EPS), jnp.inf
    )
    return new, b_simple


def noise_scale_series(
    grad_sqnorm_small: jax.typing.ArrayLike,
    grad_sqnorm_big: jax.typing.ArrayLike,
    batch_small: jax.typing.ArrayLike,
    batch_big: jax.typing.ArrayLike,
    decay: float = 0.95,
) -> dict[str, jax.Array]:
    """Runs :func:`noise_scale_update` over a sequence of steps.

    Args:
      grad_sqnorm_small: ``|G_small|^2`` per step, shape ``[T]``.
      grad_sqnorm_big: ``|G_big|^2`` per step, shape ``[T]``.
      batch_small: small batch size, scalar or shape ``[T]``.
      batch_big: big batch size, scalar or shape ``[T]``.
      decay: EMA decay in ``[0, 1)``.

    Returns:
      dict of ``[T]`` arrays: ``grad_sqnorm`` and ``trace_sigma`` (raw per-step
      estimates), ``grad_sqnorm_ema``, ``trace_sigma_ema`` (bias corrected) and
      ``b_simple`` (EMA ratio).

    Example:
      >>> out = noise_scale_series([2.0, 2.0], [1.25, 1.25], 4, 16)
      >>> [float(b) for b in out["b_simple"]]
      [4.0, 4.0]

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", 2018, appendix A.1.
    """
    s2 = jnp.asarray(grad_sqnorm_small, jnp.float32)
    b2 = jnp.asarray(grad_sqnorm_big, jnp.float32)
    if s2.ndim != 1 or s2.shape != b2.shape:
        raise ValueError(
            "grad_sqnorm_small and grad_sqnorm_big must be 1-D of equal length, got "
            f"{s2.shape} and {b2.shape}"
        )
    bs = jnp.broadcast_to(jnp.asarray(batch_small, jnp.float32), s2.shape)
    bb = jnp.broadcast_to(jnp.asarray(batch_big, jnp.float32), s2.shape)
    if not bool(jnp.all(bb > bs)) or not bool(jnp.all(bs > 0)):
        raise ValueError("need 0 < batch_small < batch_big at every step")

    def step(state, xs):
        new, b = noise_scale_update(state, *xs, decay=decay)
        return new, (new.grad_sqnorm, new.trace_sigma, new.count, b)

    _, (g_ema, t_ema, count, b) = jax.lax.scan(step, noise_scale_init(), (s2, b2, bs, bb))
    correction = 1.0 - jnp.power(jnp.float32(decay), count.astype(jnp.float32))
    g2, tr = noise_scale_estimates(s2, b2, bs, bb)
    return {
        "grad_sqnorm": g2,
        "trace_sigma": tr,
        "grad_sqnorm_ema": g_ema / correction,
        "trace_sigma_ema": t_ema / correction,
        "b_simple": b,
    }


def noise_scale_from_rows(
    rows: Sequence[Mapping[str, Any]],
    ema: float = 0.95,
    *,
    step_key: str = "step",
    row_filter: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, np.ndarray]:
    """Computes ``B_simple`` over training from a trainer's metric rows.

    Uses the rows that carry ``grad_sqnorm_small``, ``grad_sqnorm_big``, ``batch_small``
    and ``batch_big`` (logged by the trainer when a step has at least two gradient
    groups: devices or accumulation micro-batches). Reading them from a run's
    ``metrics.jsonl`` is `lars_jax.runs.run_files.noise_scale_from_metrics`.

    Args:
      rows: the metric rows (dicts), in step order.
      ema: EMA decay in ``[0, 1)``.
      step_key: the key holding the step number.
      row_filter: optional predicate selecting rows.

    Returns:
      dict of numpy arrays: ``step`` plus the entries of :func:`noise_scale_series`
      (empty arrays when no row carries the four keys).

    Example:
      >>> rows = [{"step": 1, "grad_sqnorm_small": 2.0, "grad_sqnorm_big": 1.25,
      ...          "batch_small": 4, "batch_big": 16}]
      >>> [float(b) for b in noise_scale_from_rows(rows)["b_simple"]]
      [4.0]

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", 2018.
    """
    keys = ("grad_sqnorm_small", "grad_sqnorm_big", "batch_small", "batch_big")
    rows = [
        r for r in rows
        if all(r.get(k) is not None for k in keys) and (row_filter is None or row_filter(r))
    ]
    rows = [r for r in rows if float(r["batch_big"]) > float(r["batch_small"])]
    if not rows:
        empty = np.zeros((0,), np.float32)
        return {k: empty for k in ("step", "grad_sqnorm", "trace_sigma", "grad_sqnorm_ema",
                                   "trace_sigma_ema", "b_simple")}
    cols = {k: np.asarray([float(r[k]) for r in rows], np.float32) for k in keys}
    out = noise_scale_series(
        cols["grad_sqnorm_small"], cols["grad_sqnorm_big"], cols["batch_small"],
        cols["batch_big"], decay=ema,
    )
    res = {k: np.asarray(v) for k, v in out.items()}
    res["step"] = np.asarray([r.get(step_key, i) for i, r in enumerate(rows)])
    return res


# --------------------------------------------------------------------------------------
# Gradient noise scale from one batch's per-example gradient norms
# --------------------------------------------------------------------------------------


class NoiseScaleEstimate(NamedTuple):
    """One batch's unbiased estimates of the gradient noise scale's parts.

    Attributes:
      trace_sigma: ``B/(B-1) * (mean_i |g_i|^2 - |g_B|^2)``, unbiased for ``tr(Sigma)``.
      grad_sq_norm: ``|g_B|^2 - trace_sigma / B``, unbiased for ``|G|^2`` (can be < 0).
      b_simple: ``trace_sigma / grad_sq_norm`` of this batch alone (``+inf`` when
        ``grad_sq_norm <= 0``); noisy: average the two parts over batches
        (:func:`noise_scale_average`) before dividing.
      mean_example_sq_norm: ``mean_i |g_i|^2``.
      batch_grad_sq_norm: ``|g_B|^2``.
      batch_size: ``B``.
    """

    trace_sigma: jax.Array
    grad_sq_norm: jax.Array
    b_simple: jax.Array
    mean_example_sq_norm: jax.Array
    batch_grad_sq_norm: jax.Array
    batch_size: jax.Array


def _at_least_f32(x: jax.typing.ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    return x.astype(dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32)


def noise_scale_from_sqnorms(
    mean_example_sq_norm: jax.typing.ArrayLike,
    batch_grad_sq_norm: jax.typing.ArrayLike,
    batch_size: jax.typing.ArrayLike,
) -> NoiseScaleEstimate:
    """The one-batch estimators from ``mean_i |g_i|^2``, ``|g_B|^2`` and ``B``.

    With ``g_B = mean_i g_i`` of ``B`` independent per-example gradients,
    ``mean_i |g_i|^2 - |g_B|^2 = (1/B) sum_i |g_i - g_B|^2``, the (biased) sample variance
    summed over coordinates; ``B/(B-1)`` times it is unbiased for ``tr(Sigma)``, and as
    ``E|g_B|^2 = |G|^2 + tr(Sigma)/B``, ``|g_B|^2 - tr(Sigma)/B`` is unbiased for ``|G|^2``.
    This is :func:`noise_scale_from_norms` for callers that already reduced the norms (a
    data-parallel step: ``mean_example_sq_norm`` averaged over devices, ``|g_B|^2`` of the
    all-reduced gradient and ``B`` the global batch).

    Args:
      mean_example_sq_norm: ``mean_i |g_i|^2`` (scalar, or any shape with the others).
      batch_grad_sq_norm: ``|g_B|^2``.
      batch_size: ``B >= 2``.

    Returns:
      A :class:`NoiseScaleEstimate` (float32, or float64 for float64 inputs).

    Example:
      >>> est = noise_scale_from_sqnorms(5.0, 2.0, 4)  # mean_i |g_i|^2 = 5, |g_B|^2 = 2, B = 4
      >>> float(est.trace_sigma), float(est.grad_sq_norm)
      (4.0, 1.0)

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", arXiv:1812.06162,
      2018 (section 2.2 and appendix A.1: ``E|G_B|^2 = |G|^2 + tr(Sigma)/B``).
    """
    if isinstance(batch_size, (int, float)) and batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    mean_sq = _at_least_f32(mean_example_sq_norm)
    g2 = _at_least_f32(batch_grad_sq_norm).astype(mean_sq.dtype)
    b = jnp.asarray(batch_size, mean_sq.dtype)
    trace = b / (b - 1.0) * (mean_sq - g2)
    grad_sq = g2 - trace / b
    b_simple = jnp.where(grad_sq > 0, trace / jnp.maximum(grad_sq, _EPS), jnp.inf)
    return NoiseScaleEstimate(trace, grad_sq, b_simple, mean_sq, g2, b)


def noise_scale_from_norms(grads: Any, per_example_norms: Any) -> NoiseScaleEstimate:
    """Unbiased one-batch ``tr(Sigma)``, ``|G|^2`` and ``B_simple`` from per-example norms.

    ``grads`` is the batch-mean gradient ``g_B`` and ``per_example_norms`` the tree of
    ``(B,)`` norms ``|g_i|`` of each leaf, as :func:`lars_jax.value_grad_and_norms`
    returns them: the norm of the gradient of example ``i``'s *own* loss ``l_i`` (not of
    its ``l_i / B`` share of the mean loss), so that ``mean_i g_i = g_B`` (for a loss
    that sums over the batch, pass its gradient divided by ``B``). Then::

        tr(Sigma) ~ B/(B-1) (mean_i |g_i|^2 - |g_B|^2),    |G|^2 ~ |g_B|^2 - tr(Sigma)/B

    with ``|g_i|^2`` the sum over leaves of the squared leaf norms; both are unbiased for
    independent examples (:func:`noise_scale_from_sqnorms`). The sum is taken in float32
    (float64 for float64 inputs); pure and jittable.

    BatchNorm: examples in a batch are coupled, and ``g_i`` is example ``i``'s
    *contribution* to the batch gradient times ``B`` (``B a_i^T d_i`` with the cotangent
    ``d_i`` already carrying BatchNorm's cross-example terms), which still averages to
    ``g_B`` exactly. The contributions are not independent draws: BatchNorm's backward
    centres the cotangents over its group, so components that cancel in the batch sum
    (e.g. the bias of a layer feeding a BatchNorm, whose batch gradient is exactly 0)
    still have per-example spread. The estimate is then the spread of the contributions
    around the BatchNorm batch gradient, which counts that cancelling spread as noise:
    it is *not* the two-batch estimator's ``tr(Sigma)`` (there each batch size is its own
    BatchNorm group) and overstates ``tr(Sigma)`` and ``B_simple`` (on an MLP with ghost
    BatchNorm over 32 the averaged ``|G|^2`` estimate went negative where the two-batch
    estimator gave ``B_simple`` about 360: docs/advise.md). Without
    normalisation layers, or with GroupNorm / LayerNorm (per example), the ``g_i`` are
    the ordinary per-example gradients and the estimators are exact in expectation.

    Args:
      grads: the batch-mean gradient tree ``g_B``.
      per_example_norms: a tree with the same leaves as ``grads`` (or any tree of
        ``(B,)`` arrays) holding the per-example norms ``|g_i|`` of each leaf.

    Returns:
      A :class:`NoiseScaleEstimate`.

    Raises:
      ValueError: when the norm leaves are not all ``(B,)`` with one ``B >= 2``.

    Example:
      >>> import jax.numpy as jnp
      >>> g = jnp.array([[1.0, 0.0], [-1.0, 2.0]])  # two examples' gradients
      >>> est = noise_scale_from_norms({"w": g.mean(0)}, {"w": jnp.linalg.norm(g, axis=1)})
      >>> float(est.trace_sigma), float(est.grad_sq_norm)  # |g1 - g2|^2 / 2 = 4; 1 - 4/2
      (4.0, -1.0)

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", arXiv:1812.06162,
      2018 (section 2.2, appendix A.1).
      Goodfellow, "Efficient per-example gradient computations", arXiv:1510.01799, 2015.
      Ioffe, Szegedy, "Batch Normalization", arXiv:1502.03167, 2015 (section 3: the
      gradient through the batch statistics).
    """
    leaves = jax.tree_util.tree_leaves(per_example_norms)
    shapes = {tuple(jnp.shape(n)) for n in leaves}
    if not leaves or len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(
            f"per_example_norms: every leaf must have shape (B,) with one B, got {sorted(shapes)}"
        )
    batch = next(iter(shapes))[0]
    if batch < 2:
        raise ValueError(f"per_example_norms: need a batch of B >= 2 examples, got B={batch}")
    mean_sq = sum(jnp.mean(jnp.square(_at_least_f32(n))) for n in leaves)
    g2 = sum(jnp.sum(jnp.square(_at_least_f32(g))) for g in jax.tree_util.tree_leaves(grads))
    return noise_scale_from_sqnorms(mean_sq, g2, batch)


class NoiseScaleAverage(NamedTuple):
    """Exponential moving averages of one-batch estimates, with standard errors.

    Every field is an array with one entry per step (the average up to that step).

    Attributes:
      trace_sigma: EMA of ``tr(Sigma)`` (bias corrected).
      grad_sq_norm: EMA of ``|G|^2`` (bias corrected).
      b_simple: ``trace_sigma / grad_sq_norm`` (``+inf`` while ``grad_sq_norm <= 0``).
      trace_sigma_se: standard error of ``trace_sigma``.
      grad_sq_norm_se: standard error of ``grad_sq_norm``.
      b_simple_se: standard error of ``b_simple`` (delta method, with the covariance).
      b_simple_lo: lower end of the ``z``-interval (``max(b - z se, 0)``).
      b_simple_hi: upper end (``+inf`` while ``grad_sq_norm - z se`` is not positive).
      effective_count: Kish's effective number of steps ``(sum w)^2 / sum w^2``.
    """

    trace_sigma: jax.Array
    grad_sq_norm: jax.Array
    b_simple: jax.Array
    trace_sigma_se: jax.Array
    grad_sq_norm_se: jax.Array
    b_simple_se: jax.Array
    b_simple_lo: jax.Array
    b_simple_hi: jax.Array
    effective_count: jax.Array


def noise_scale_average(
    trace_sigma: jax.typing.ArrayLike,
    grad_sq_norm: jax.typing.ArrayLike,
    decay: float = 0.95,
    z: float = 1.96,
) -> NoiseScaleAverage:
    """Averages one-batch estimates over steps: EMAs of numerator and denominator apart.

    McCandlish et al. advise averaging ``tr(Sigma)`` and ``|G|^2`` separately before
    dividing (the ratio of single-batch estimates is heavily biased and can be negative).
    With weights ``w_t = decay^(T-t)``, the EMAs are weighted means; their standard
    errors treat the per-step estimates as independent (fresh batches) with the weighted
    sample (co)variance over the window, divided by the effective count
    ``(sum w)^2 / sum w^2`` (``(1+decay)/(1-decay)`` in the limit: 39 for 0.95). The
    interval of ``B_simple`` is the delta-method ``b +- z se``, open above while the
    ``|G|^2`` interval reaches 0. Parameters drift during training, so this is the
    uncertainty of a moving target's recent level; pure and jittable (``lax.scan``).

    Args:
      trace_sigma: one-batch ``tr(Sigma)`` estimates, shape ``[T]``.
      grad_sq_norm: one-batch ``|G|^2`` estimates, shape ``[T]``.
      decay: EMA decay in ``[0, 1)``.
      z: half-width of the interval in standard errors (1.96: 95% for a normal).

    Returns:
      A :class:`NoiseScaleAverage` of ``[T]`` arrays (standard errors are ``+inf`` at
      the first step, where no spread is known).

    Example:
      >>> avg = noise_scale_average([4.0, 6.0], [1.0, 1.0], decay=0.0)
      >>> float(avg.b_simple[-1])  # decay 0: the last step alone
      6.0

    References:
      McCandlish et al., "An Empirical Model of Large-Batch Training", arXiv:1812.06162,
      2018 (appendix A.1: average numerator and denominator separately).
      Kish, "Survey Sampling", Wiley, 1965 (effective sample size of weighted means).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    t = _at_least_f32(trace_sigma)
    g = _at_least_f32(grad_sq_norm).astype(t.dtype)
    if t.ndim != 1 or t.shape != g.shape or t.shape[0] == 0:
        raise ValueError(
            f"trace_sigma and grad_sq_norm must be 1-D of one length >= 1, got {t.shape} and "
            f"{g.shape}"
        )
    d = jnp.asarray(decay, t.dtype)

    def step(acc, tg):
        x, y = tg
        w, w2, *sums = acc  # sum of weights, of squared weights (decaying as d^2), sums
        sums = [d * a + v for a, v in zip(sums, (x, y, x * x, y * y, x * y), strict=True)]
        acc = (d * w + 1.0, d * d * w2 + 1.0, *sums)
        return acc, acc

    zero = jnp.zeros((), t.dtype)
    _, (w, w2, sx, sy, sxx, syy, sxy) = jax.lax.scan(step, (zero,) * 7, (t, g))
    mx, my = sx / w, sy / w
    # unbiased weighted (co)variance ("reliability weights"); undefined at one step
    denom = w * w - w2
    has_spread = denom > 0
    scale = jnp.where(has_spread, w * w / jnp.where(has_spread, denom, 1.0), jnp.inf)
    n_eff = w * w / w2
    var_x = jnp.maximum(sxx / w - mx * mx, 0.0) * scale / n_eff
    var_y = jnp.maximum(syy / w - my * my, 0.0) * scale / n_eff
    cov = (sxy / w - mx * my) * jnp.where(has_spread, scale, 0.0) / n_eff
    pos = my > 0
    b = jnp.where(pos, mx / jnp.where(pos, my, 1.0), jnp.inf)
    safe_x = jnp.where(mx != 0, mx, 1.0)
    safe_y = jnp.where(pos, my, 1.0)
    rel2 = var_x / safe_x**2 + var_y / safe_y**2 - 2.0 * cov / (safe_x * safe_y)
    b_se = jnp.where(pos & has_spread, jnp.abs(b) * jnp.sqrt(jnp.maximum(rel2, 0.0)), jnp.inf)
    se_x, se_y = jnp.sqrt(var_x), jnp.sqrt(var_y)
    lo = jnp.where(pos & has_spread, jnp.maximum(b - z * b_se, 0.0), 0.0)
    hi = jnp.where(pos & has_spread & (my - z * se_y > 0), b + z * b_se, jnp.inf)
    return NoiseScaleAverage(mx, my, b, se_x, se_y, b_se, lo, hi, n_eff)
