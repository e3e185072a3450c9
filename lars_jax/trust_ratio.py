"""Layer-wise trust ratios of LARS, LARC and CLARS as Optax gradient transformations.

For every parameter tensor ``w`` with gradient ``g`` the transformations here return
``ratio * (g + wd * w)`` where ``ratio`` is a per-tensor scalar (the "local learning
rate" of You et al.)::

    paper form (default, You et al. 2017, eq. 6 / Algorithm 1):
        ratio = tc * ||w|| / (||g|| + wd * ||w|| + eps)
    optax form (what optax.lars computes, add_decayed_weights then scale_by_trust_ratio):
        ratio = tc * ||w|| / (||g + wd * w|| + eps)
    CLARS (Huo, Gu, Huang 2020; exact rule UNVERIFIED, see scale_by_clars_trust_ratio):
        ratio = tc * ||w|| / (mean_i ||g_i|| + wd * ||w|| + eps)

    ratio = 1                 where ||w|| == 0 or the gradient-norm term == 0
    ratio = min(ratio, clip)  when clip is given (LARC), see below
    ratio = NaN               where a norm is not finite (NaN/Inf in w, g or the norms)

The learning rate and momentum are *not* applied here: chain these transformations
with :func:`optax.scale_by_learning_rate` and :func:`optax.trace` (or use the aliases
in :mod:`lars_jax.alias`). Norms are computed in float32 for float32 and lower-precision
parameters, and in float64 for float64 parameters (under ``jax_enable_x64``); the output
keeps the dtype of the incoming update. The state keeps the last step's per-tensor
ratios and norms so that they can be logged; use :func:`trust_ratio_stats` to find them
inside any optimizer state.

Norms are exact for tiny and huge tensors. The common path is one reduction, the plain
sum of squares; where that sum is not finite or so small that squares may have
underflowed (below ``size * 2**-100``), the norm is recomputed scaled by the tensor's
largest magnitude (as BLAS's nrm2), so tensors whose entries are far from 1 (a gradient
of 1e-25 in bfloat16, weights of 1e20) get their exact ratio instead of a sum of squares
that underflows to 0 or overflows. XLA flushes float32 denormals (below ~1.2e-38) to zero
on CPU, GPU and TPU: a tensor of denormals is a zero tensor here. A norm that exceeds the
float range is Inf.

Complex parameters. Norms are real: ``||x|| = sqrt(sum |x|^2)`` (``re^2 + im^2``), as
in ``optax.lars``; the ratio is real and scales the complex update. With the optax form
the result equals ``optax.lars`` on complex parameters (tested, including optax's own
complex optimisation case). Gradients of a real loss must be conjugated before the
update, as for every optax optimizer.

Inputs refused. ``trust_coefficient <= 0`` (the masked tensors would never move),
integer or boolean parameters or updates (``optax.apply_updates`` would truncate the
step), and CLARS ``per_example_norms`` that are complex, not of shape ``(n,)`` or of
different ``n`` for different tensors all raise a ``ValueError`` naming the argument;
these checks are static (shapes and dtypes), so they cost nothing under :func:`jax.jit`.
A negative per-example norm cannot be checked statically: it makes that tensor's ratio
NaN (so the update is NaN and the NaN check below sees it), never a flipped step.

Non-finite values. The fallback ``ratio = 1`` is taken only where a norm is exactly 0.
A NaN or Inf in a parameter, a gradient or ``per_example_norms`` makes the ratio NaN, so
the update is NaN too and a NaN check on the updates or the new parameters sees it, as
with ``optax.lars``; it never turns into a finite, larger step. (Note that
:func:`optax.apply_if_finite` checks the incoming gradients only: it skips a NaN gradient
but not NaN ``per_example_norms``.)

LARC clipping (``clip``). This library clips the *trust ratio*: the per-tensor rate is
``lr * min(ratio, clip)``; with ``clip=1`` (the default of :func:`lars_jax.larc`) that
is ``min(lr * ratio, lr)``: adaptation may slow a layer down but never speed it up
beyond the global rate. NVIDIA apex's ``LARC(clip=True)`` differs: it multiplies the
gradient by ``min(ratio / lr, 1)``, so its per-layer rate is ``min(ratio, lr)``: a layer
whose ratio is below ``lr`` moves at ``ratio`` (not ``lr * ratio``), i.e. the clipped
ratio acts as an absolute learning rate. The two agree when ``lr == 1`` or when the ratio
exceeds both 1 and ``lr`` (both then give ``lr``). apex's ``clip=False`` ("scale" mode)
is the unclipped rate ``lr * ratio`` used here. The fallback ratio 1 (zero norms) is
never clipped; unlike apex, which then skips weight decay too, the fallback here still
applies ``g + wd * w``.

References:
  You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
  <https://arxiv.org/abs/1708.03888>`_, 2017 (LARS, LARC as "clipping" in later versions).

  Huo, Gu, Huang, `Large Batch Training Does Not Need Warmup
  <https://arxiv.org/abs/2002.01576>`_, 2020 (CLARS).

  NVIDIA apex, ``apex.parallel.LARC`` (the LARC variant described above).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DENOMINATORS = ("paper", "optax")
_F32 = jnp.float32


class LarsTrustRatioState(NamedTuple):
    """State of a (C)LARS trust-ratio transformation: the last step's statistics and a count.

    ``trust_ratio``, ``param_norm`` and ``grad_norm`` are pytrees with the structure of
    the (masked) parameters whose leaves are real float32 scalars (float64 for float64 or
    complex128 parameters). Tensors excluded by an enclosing :func:`optax.masked` hold
    :class:`optax.MaskedNode` instead, an empty pytree node that ``jax.tree.leaves`` and
    ``jax.tree_util.tree_flatten_with_path`` skip.

    Attributes:
      trust_ratio: the ratio actually applied (after LARC clipping; 1 where a norm is 0,
        NaN where a norm is not finite). Before the first update it is 1.
      param_norm: ``||w||`` (float32; float64 for 64-bit params).
      grad_norm: the gradient-norm term of the denominator: ``||g||`` for the paper
        form, ``||g + wd * w||`` for the optax form, ``mean_i ||g_i||`` for CLARS.
      count: int32 number of updates so far; a ``weight_decay`` schedule is evaluated at
        it (as optax's schedules are), whether or not one is used, so that the state's
        type never depends on the arguments.
    """

    trust_ratio: Any
    param_norm: Any
    grad_norm: Any
    count: jax.Array


_STATS_FIELDS = ("trust_ratio", "param_norm", "grad_norm")


# --------------------------------------------------------------------------- checks


def _concrete(value: Any) -> np.ndarray | None:
    """Returns ``value`` as a NumPy array, or None when it is traced (checked later)."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _value_at_step_zero(name: str, value: Any) -> Any:
    if callable(value):
        try:
            return value(0)
        except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
            raise ValueError(f"`{name}` is callable but calling it at step 0 failed: {e}") from e
    return value


def _as_float64(name: str, value: Any, v: np.ndarray) -> np.ndarray:
    """A concrete hyperparameter as float64; complex only with a zero imaginary part.

    ``optax.inject_hyperparams`` casts numeric hyperparameters to the parameters' dtype,
    so complex (or bfloat16) parameters give complex (or bfloat16) hyperparameters.
    """
    if not (jnp.issubdtype(v.dtype, jnp.number) or v.dtype == np.bool_):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    if np.iscomplexobj(v):
        if np.any(v.imag != 0):
            raise ValueError(f"`{name}` must be real, got {value!r}.")
        v = v.real
    return v.astype(np.float64)


def check_non_negative(name: str, value: Any, *, schedule_ok: bool = True) -> None:
    """Raises ValueError naming ``name`` if ``value`` (or a schedule's value at step 0) < 0.

    Traced values cannot be checked at trace time and are accepted.
    """
    if callable(value) and not schedule_ok:
        raise ValueError(f"`{name}` must be a number, got a callable {value!r}.")
    v = _concrete(_value_at_step_zero(name, value))
    if v is None:
        return
    v = _as_float64(name, value, v)
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        at0 = " (schedule value at step 0)" if callable(value) else ""
        raise ValueError(f"`{name}` must be finite and >= 0, got {v.tolist()}{at0}.")


def check_positive(name: str, value: Any) -> None:
    """Raises ValueError naming ``name`` unless ``value`` is a finite number > 0.

    A trust coefficient of 0 gives a zero ratio: the masked tensors would never move.
    Traced values cannot be checked at trace time and are accepted.
    """
    if callable(value):
        raise ValueError(f"`{name}` must be a number > 0, got a callable {value!r}.")
    v = _concrete(value)
    if v is None:
        return
    v = _as_float64(name, value, v)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"`{name}` must be finite and > 0, got {v.tolist()}.")


def _leaf_dtype(leaf: Any) -> np.dtype:
    dtype = getattr(leaf, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(leaf).dtype


def _check_inexact(tree: Any, what: str) -> None:
    """Raises ValueError naming the first leaf of ``tree`` that is not float or complex.

    An integer (or boolean) parameter would get its update truncated by
    ``optax.apply_updates``: refused instead. The dtype is static, so this costs nothing
    under :func:`jax.jit`.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = _leaf_dtype(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise ValueError(
                f"`{what}` leaf at {jax.tree_util.keystr(path)} has dtype {dtype}: LARS needs "
                f"floating-point (or complex) {what}; cast them, e.g. "
                "jax.tree.map(lambda x: x.astype(jnp.float32), params)."
            )


def check_momentum(value: Any, name: str = "momentum") -> None:
    """Raises ValueError naming ``name`` unless ``0 <= value < 1`` (traced values pass)."""
    if callable(value):
        raise ValueError(
            f"`{name}` must be a number; to schedule it wrap the optimizer in "
            "optax.inject_hyperparams."
        )
    v = _concrete(value)
    if v is None:
        return
    v = _as_float64(name, value, v)
    if not np.all(np.isfinite(v)) or np.any(v < 0) or np.any(v >= 1):
        raise ValueError(f"`{name}` must be in [0, 1), got {v.tolist()}.")


def check_clip(clip: Any) -> None:
    """Raises ValueError naming ``clip`` unless it is None or a number > 0."""
    if clip is None:
        return
    if callable(clip):
        raise ValueError("`clip` must be None or a number > 0, got a callable.")
    v = _concrete(clip)
    if v is None:
        return
    v = _as_float64("clip", clip, v)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"`clip` must be None or a number > 0, got {v.tolist()}.")


def check_denominator(denominator: Any, allowed: tuple[str, ...] = DENOMINATORS) -> None:
    """Raises ValueError naming ``denominator`` unless it is one of ``allowed``."""
    if denominator not in allowed:
        raise ValueError(f"`denominator` must be one of {allowed}, got {denominator!r}.")


# --------------------------------------------------------------------------- math


def _compute_dtype(*arrays: Any) -> jnp.dtype:
    """float32 for float32 and lower precision, float64 for float64 (under x64).

    Complex inputs give the complex type of that precision (complex64/complex128).
    """
    return jnp.result_type(_F32, *(np.dtype(a.dtype) for a in arrays))


def _real_dtype(*arrays: Any) -> jnp.dtype:
    """The real dtype of norms and ratios: float32, or float64 for 64-bit inputs."""
    return jnp.finfo(_compute_dtype(*arrays)).dtype


def _abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2`` elementwise, real for complex ``x`` (``re^2 + im^2``)."""
    if jnp.iscomplexobj(x):
        return jnp.square(x.real) + jnp.square(x.imag)
    return jnp.square(x)


def _scaled_norm(x: jax.Array) -> jax.Array:
    """``||x||`` scaled by the largest magnitude first (as BLAS's nrm2): never under/overflows.

    The scale is applied as two factors that are both normal floats (a power of two, then
    ``1 / m`` of a number in ``[2**-85, 2**64]``), so denormal and huge ``m`` work too.
    Complex tensors are normed as the real vector of their real and imaginary parts.
    """
    if jnp.iscomplexobj(x):
        x = jnp.stack([x.real, x.imag])
    m = jnp.max(jnp.abs(x))
    pre = jnp.where(m < 2.0**-64, 2.0**64, jnp.where(m > 2.0**64, 2.0**-64, 1.0)).astype(x.dtype)
    m_pre = m * pre
    inv = jnp.where(jnp.logical_and(m_pre > 0, jnp.isfinite(m_pre)), 1 / m_pre, 1).astype(x.dtype)
    return jnp.sqrt(jnp.sum(jnp.square((x * pre) * inv))) * m


# Below ``size * 2**-100`` a sum of squares may have lost more than float32's rounding to
# squares that underflowed (each loses < 2**-126, float32's smallest normal).
_FAST_PATH_MIN_PER_ENTRY = 2.0**-100


def _norm(x: jax.Array) -> jax.Array:
    """``||x|| = sqrt(sum |x|^2)``, real (also for complex ``x``), exact for tiny and huge x.

    The common path is one reduction: the plain sum of squares. It is kept where it is
    trustworthy: finite and at least ``x.size * 2**-100`` (entries whose squares
    underflowed then cost less than float32's rounding). Otherwise (a zero, tiny, huge or
    non-finite tensor) :func:`lax.cond` selects :func:`_scaled_norm`, which scales by the
    largest magnitude first, so a gradient of 1e-25 or weights of 1e20 still get their
    exact norm. Only the selected branch runs (under :func:`jax.vmap` both do). NaN and
    Inf entries give a NaN/Inf norm.
    """
    if x.size == 0:
        return jnp.zeros((), jnp.finfo(x.dtype).dtype)
    sq = jnp.sum(_abs_sq(x))
    fast = jnp.logical_and(sq >= x.size * _FAST_PATH_MIN_PER_ENTRY, sq < jnp.inf)
    return jax.lax.cond(fast, lambda: jnp.sqrt(sq), lambda: _scaled_norm(x).astype(sq.dtype))


def _is_zero_constant(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def _as(x: Any, dtype: jnp.dtype) -> Any:
    """Python numbers stay weakly typed; arrays are cast to the real ``dtype``.

    The real part is taken explicitly: under ``optax.inject_hyperparams`` the
    hyperparameters of complex parameters arrive as complex numbers with imaginary part 0.
    """
    return x if isinstance(x, (int, float)) else jnp.asarray(jnp.real(x), dtype)


def _finish(
    g: jax.Array, u: jax.Array, numer: jax.Array, denom: jax.Array,
    param_norm: jax.Array, grad_norm: jax.Array, clip: Any,
) -> tuple[jax.Array, jax.Array]:
    """Applies ``ratio = numer / denom`` (1 where a norm is 0, clipped) to ``u``.

    Only an exact zero norm takes the fallback ratio 1: a NaN/Inf norm gives a NaN ratio
    (and update) instead of a silently larger finite step.
    """
    fallback = jnp.logical_or(param_norm == 0, grad_norm == 0)
    safe_denom = jnp.where(fallback, jnp.ones_like(denom), denom)
    ratio = numer / safe_denom
    scaled = jnp.logical_not(fallback)
    if clip is not None:
        scaled = jnp.logical_and(scaled, ratio <= clip)
        ratio = jnp.minimum(ratio, clip)
    ratio = jnp.where(fallback, jnp.ones_like(ratio), ratio)
    finite = jnp.logical_and(jnp.isfinite(param_norm), jnp.isfinite(grad_norm))
    ratio = jnp.where(finite, ratio, jnp.full_like(ratio, jnp.nan))
    # ``(u / denom) * numer`` rather than ``u * ratio``: |u| <= denom, so the first factor
    # is at most 1 and the step stays exact where the ratio alone under- or overflows
    # (tiny ||w|| with huge ||g||, or the reverse).
    by_norms = (u * (1 / safe_denom)) * numer
    out = jnp.where(jnp.logical_and(scaled, finite), by_norms, u * ratio).astype(g.dtype)
    return out, ratio


def _tensor_update(
    g: jax.Array, w: jax.Array, wd: Any, tc: Any, eps: Any, clip: Any, denominator: str,
    grad_norm: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One tensor's ``(out, ratio, ||w||, gradient-norm term)``.

    ``denominator="paper"`` (CLARS when ``grad_norm``, the mean per-example norm, is
    given) or ``"optax"`` (ratio from ``||g + wd * w||``). Norms and ratios are real, also
    for complex tensors.
    """
    dtype = _compute_dtype(w, g)
    real = jnp.finfo(dtype).dtype
    w32, g32 = w.astype(dtype), g.astype(dtype)
    wd, tc, eps = _as(wd, real), _as(tc, real), _as(eps, real)
    clip = None if clip is None else _as(clip, real)
    no_decay = _is_zero_constant(wd)
    u = g32 if no_decay else g32 + wd * w32
    param_norm = _norm(w32)
    if denominator == "optax":
        grad_norm = _norm(u)
        # Same operation order as optax.scale_by_trust_ratio: (tc * ||w||) / (||u|| + eps).
        denom = grad_norm + eps
    else:
        grad_norm = _norm(g32) if grad_norm is None else grad_norm
        denom = grad_norm + eps if no_decay else grad_norm + wd * param_norm + eps
    out, ratio = _finish(g, u, tc * param_norm, denom, param_norm, grad_norm, clip)
    return out, ratio, param_norm, grad_norm


def _mean_norm(norms: Any, g: jax.Array, w: jax.Array) -> jax.Array:
    """``mean_i ||g_i||``; NaN where a norm is negative (so the update is NaN, not ascent)."""
    n = jnp.asarray(norms, _real_dtype(w, g))
    return jnp.where(jnp.min(n) < 0, jnp.nan, jnp.mean(n))


def _init_state(params: optax.Params) -> LarsTrustRatioState:
    _check_inexact(params, "params")
    ones = jax.tree.map(lambda w: jnp.ones((), _real_dtype(w)), params)
    zeros = jax.tree.map(lambda w: jnp.zeros((), _real_dtype(w)), params)
    return LarsTrustRatioState(trust_ratio=ones, param_norm=zeros, grad_norm=zeros,
                               count=jnp.zeros((), jnp.int32))


def _apply_per_tensor(fn: Callable, updates, params, *extra_trees):
    """Maps ``fn(g, w, *extra) -> (out, ratio, pnorm, gnorm)``; returns out and 3 stat trees."""
    leaves, treedef = jax.tree.flatten(updates)
    p_leaves = treedef.flatten_up_to(params)
    extra_leaves = [treedef.flatten_up_to(t) for t in extra_trees]
    results = [fn(g, w, *ex) for g, w, *ex in zip(leaves, p_leaves, *extra_leaves, strict=True)]
    out, ratio, pn, gn = (treedef.unflatten([r[i] for r in results]) for i in range(4))
    return out, (ratio, pn, gn)


def _trust_ratio_transform(
    name: str, weight_decay: optax.ScalarOrSchedule, trust_coefficient: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike, denominator: str, clip: jax.typing.ArrayLike | None, *,
    clars: bool,
) -> optax.GradientTransformationExtraArgs:
    """The one factory behind :func:`scale_by_lars_trust_ratio` and the CLARS variant.

    A ``weight_decay`` schedule is evaluated at the state's own step count, so the state
    is a :class:`LarsTrustRatioState` whatever the arguments.
    """
    check_denominator(denominator, allowed=("paper",) if clars else DENOMINATORS)
    check_clip(clip)
    check_positive("trust_coefficient", trust_coefficient)
    check_non_negative("eps", eps, schedule_ok=False)
    check_non_negative("weight_decay", weight_decay)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"{name} needs `params` in update().")
        _check_inexact(params, "params")
        _check_inexact(updates, "updates")
        wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
        tc, ep, cl = trust_coefficient, eps, clip
        if clars:
            norms = _align_to_masked_updates(extra_args.get("per_example_norms"), updates)
            _check_per_example_norms(norms, updates)
            out, stats = _apply_per_tensor(
                lambda g, w, n: _tensor_update(g, w, wd, tc, ep, cl, "paper",
                                               grad_norm=_mean_norm(n, g, w)),
                updates, params, norms,
            )
        else:
            if "per_example_norms" in extra_args:
                raise ValueError(
                    f"{name} (lars/larc) got `per_example_norms`, which only CLARS uses: "
                    "build the optimizer with lars_jax.clars (or scale_by_clars_trust_ratio), "
                    "or drop the argument."
                )
            out, stats = _apply_per_tensor(
                lambda g, w: _tensor_update(g, w, wd, tc, ep, cl, denominator), updates, params
            )
        return out, LarsTrustRatioState(*stats, count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(_init_state, update_fn)


# --------------------------------------------------------------------------- transforms


def scale_by_lars_trust_ratio(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 0.0,
    denominator: str = "paper",
    clip: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformation:
    """Adds weight decay and scales each tensor's update by its LARS trust ratio.

    Per parameter tensor ``w`` with incoming gradient ``g``::

        u     = g + weight_decay * w
        ratio = tc * ||w|| / (||g|| + weight_decay * ||w|| + eps)   denominator="paper"
        ratio = tc * ||w|| / (||u|| + eps)                          denominator="optax"
        ratio = 1 if ||w|| == 0 or the gradient norm above == 0
        ratio = min(ratio, clip)                                    if clip is not None
        out   = ratio * u

    ``denominator="optax"`` reproduces ``optax.add_decayed_weights`` followed by
    ``optax.scale_by_trust_ratio(trust_coefficient=tc, eps=eps)`` (the core of
    ``optax.lars``), except that norms are taken in float32 for low-precision params.
    Complex tensors get real norms ``sqrt(sum |x|^2)`` and a real ratio.
    Apply the learning rate and momentum afterwards, or use :func:`lars_jax.lars`.

    Args:
      weight_decay: coupled weight decay ``wd >= 0`` (added to the gradient before
        scaling, as in You et al.'s Algorithm 1). A schedule is accepted: it is
        evaluated at the state's step count (``LarsTrustRatioState.count``).
      trust_coefficient: ``tc > 0`` (0.001 in the paper).
      eps: ``eps >= 0`` added to the denominator.
      denominator: ``"paper"`` or ``"optax"``, see above.
      clip: ``None`` (LARS) or a number ``> 0``; the ratio is clipped to at most
        ``clip`` (LARC with ``clip=1``; see the module docstring for how this differs
        from NVIDIA apex's LARC).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a
      :class:`LarsTrustRatioState` holding the last step's ratios and norms.

    Raises:
      ValueError: for a negative ``weight_decay``/``eps``, ``trust_coefficient <= 0``,
        an unknown ``denominator``, a ``clip <= 0``, non-float params (at ``init`` and
        ``update``), or when ``update`` gets no params or gets ``per_example_norms`` (a
        CLARS argument that LARS would silently ignore).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_lars_trust_ratio(trust_coefficient=1.0)
      >>> w, g = {"k": jnp.full((2, 2), 3.0)}, {"k": jnp.full((2, 2), 0.5)}
      >>> out, state = tx.update(g, tx.init(w), w)
      >>> print(f"{float(state.trust_ratio['k']):.1f} {float(out['k'][0, 0]):.1f}")
      6.0 3.0

    References:
      You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.
    """
    return _trust_ratio_transform(
        "scale_by_lars_trust_ratio", weight_decay, trust_coefficient, eps, denominator, clip,
        clars=False,
    )


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _align_to_masked_updates(per_example_norms: Any, updates: Any) -> Any:
    """Drops the norms of tensors an enclosing :func:`optax.masked` excluded.

    Without ``mask_compatible_extra_args=True``, ``optax.masked`` passes the norms of all
    tensors while the updates hold :class:`optax.MaskedNode` for the excluded ones.
    """
    if per_example_norms is None or jax.tree.structure(per_example_norms) == jax.tree.structure(
        updates
    ):
        return per_example_norms
    if not any(map(_is_masked_node, jax.tree.leaves(updates, is_leaf=_is_masked_node))):
        return per_example_norms
    try:
        return jax.tree.map(
            lambda u, n: u if _is_masked_node(u) else n, updates, per_example_norms,
            is_leaf=_is_masked_node,
        )
    except ValueError:
        return per_example_norms  # _check_per_example_norms names the mismatch


def _check_per_example_norms(per_example_norms: Any, updates: Any) -> None:
    """Structure, shape ``(n,)``, a real dtype and one ``n`` for every (unmasked) tensor.

    All shapes and dtypes are static, so this runs at trace time under :func:`jax.jit`.
    """
    if per_example_norms is None:
        raise ValueError(
            "scale_by_clars_trust_ratio.update needs the keyword argument "
            "`per_example_norms`: a pytree like params whose leaves have shape (n,)."
        )
    want = jax.tree.structure(updates)
    got = jax.tree.structure(per_example_norms)
    if want != got:
        raise ValueError(
            "`per_example_norms` must have the structure of the params/updates "
            f"(leaves of shape (n,)); expected {want}, got {got}."
        )
    first: tuple[str, int] | None = None
    for path, leaf in jax.tree_util.tree_flatten_with_path(per_example_norms)[0]:
        shape, where = np.shape(leaf), jax.tree_util.keystr(path)
        if len(shape) != 1 or shape[0] < 1:
            raise ValueError(
                f"`per_example_norms` leaves must have shape (n,) with n >= 1; the leaf at "
                f"{where} has shape {shape}."
            )
        dtype = _leaf_dtype(leaf)
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise ValueError(
                f"`per_example_norms` must be real numbers (norms); the leaf at {where} has "
                f"dtype {dtype}."
            )
        if first is None:
            first = (where, shape[0])
        elif shape[0] != first[1]:
            raise ValueError(
                "`per_example_norms` must hold one norm per example (or group) for every "
                f"tensor: the leaf at {first[0]} has {first[1]}, the leaf at {where} has "
                f"{shape[0]}."
            )


def scale_by_clars_trust_ratio(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 0.0,
    denominator: str = "paper",
    clip: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """CLARS: the LARS trust ratio with the mean of per-example gradient norms.

    Per parameter tensor ``w`` with batch gradient ``g = (1/n) sum_i g_i``::

        u     = g + weight_decay * w
        ratio = tc * ||w|| / (mean_i ||g_i|| + weight_decay * ||w|| + eps)
        ratio = 1 if ||w|| == 0 or mean_i ||g_i|| == 0
        ratio = min(ratio, clip)               if clip is not None
        out   = ratio * u

    By the triangle inequality ``mean_i ||g_i|| >= ||g||``, so the CLARS ratio never
    exceeds the LARS (paper form) ratio, with equality when all ``g_i`` are equal:
    while per-example gradients disagree (early in training) CLARS takes smaller steps.

    UNVERIFIED: Huo, Gu and Huang's paper body could not be checked; the rule above is
    the form this project implements from the paper's abstract and secondary sources
    (arXiv:2002.01576), not a verified transcription of their algorithm.
    ``g_i`` may be per-example gradients (exact) or per-micro-batch gradients (e.g.
    one per device; a cheaper approximation): report which one a result used.

    Args:
      weight_decay: coupled weight decay ``>= 0`` (float or schedule, as in
        :func:`scale_by_lars_trust_ratio`).
      trust_coefficient: ``tc > 0``.
      eps: ``eps >= 0`` added to the denominator.
      denominator: only ``"paper"`` is defined for CLARS (the optax form needs the
        per-example norms of ``g_i + wd * w``, which norms alone do not give).
      clip: ``None`` or a number ``> 0``: LARC-style clipping of the ratio.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; its ``update`` takes the
      keyword argument ``per_example_norms``: a pytree with the structure of the
      params whose leaves have shape ``(n,)`` with the same ``n`` for every tensor (the
      norms ``||g_i||`` of that tensor's per-example or per-micro-batch gradients; a
      negative norm makes that tensor's ratio and update NaN). State: :class:`LarsTrustRatioState`
      with ``grad_norm = mean_i ||g_i||``.

    Raises:
      ValueError: for bad hyperparameters (as :func:`scale_by_lars_trust_ratio`),
        ``denominator != "paper"``, or when ``per_example_norms`` is missing, does not
        match the structure of the updates with real leaves of shape ``(n,)``, or has
        different ``n`` for different tensors (the batch or group count).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_clars_trust_ratio(trust_coefficient=1.0)
      >>> w, g = {"k": jnp.full((2, 2), 3.0)}, {"k": jnp.full((2, 2), 0.5)}
      >>> norms = {"k": jnp.array([1.0, 3.0])}  # ||g|| = 1 <= mean = 2
      >>> out, state = tx.update(g, tx.init(w), w, per_example_norms=norms)
      >>> print(f"{float(state.trust_ratio['k']):.1f}")
      3.0

    References:
      Huo, Gu, Huang, `Large Batch Training Does Not Need Warmup
      <https://arxiv.org/abs/2002.01576>`_, 2020 (AAAI 2021: "Large Batch Optimization
      for Deep Learning Using New Complete Layer-Wise Adaptive Rate Scaling").

      You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.
    """
    return _trust_ratio_transform(
        "scale_by_clars_trust_ratio", weight_decay, trust_coefficient, eps, denominator, clip,
        clars=True,
    )


# --------------------------------------------------------------------------- logging


def trust_ratio_stats(opt_state: Any) -> dict[str, Any] | None:
    """Finds the last step's (C)LARS ratios and norms anywhere inside an optimizer state.

    Searches through chain tuples, ``MaskedState``, ``InjectHyperparamsState`` and any
    other pytree node for :class:`LarsTrustRatioState` nodes. Several of them (e.g. one
    per group of ``optax.multi_transform``) are merged into one tree when they cover
    disjoint tensors of the same parameter structure.

    Args:
      opt_state: the state of an optimizer built with this library (or any chain
        containing :func:`scale_by_lars_trust_ratio` / :func:`scale_by_clars_trust_ratio`).

    Returns:
      ``None`` when the state holds no trust-ratio state; otherwise a dict with keys
      ``"trust_ratio"``, ``"param_norm"``, ``"grad_norm"``, each a pytree like the params
      with scalar leaves. Tensors that no trust-ratio transformation covers hold
      :class:`optax.MaskedNode` (an empty pytree node, skipped by ``jax.tree.leaves``
      and ``jax.tree_util.tree_flatten_with_path``).

    Raises:
      ValueError: when several trust-ratio states cover the same tensor or have
        different parameter structures (read them one by one from the state instead).

    Examples:
      >>> import jax.numpy as jnp
      >>> import lars_jax
      >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
      >>> tx = lars_jax.lars(0.1)
      >>> stats = trust_ratio_stats(tx.init(params))
      >>> sorted(stats), jax.tree.leaves(stats["trust_ratio"])
      (['grad_norm', 'param_norm', 'trust_ratio'], [Array(1., dtype=float32)])

    References:
      You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.
    """
    is_state = lambda x: isinstance(x, LarsTrustRatioState)
    states = [n for n in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(n)]
    if not states:
        return None
    fields = _STATS_FIELDS
    if len(states) == 1:
        return {f: getattr(states[0], f) for f in fields}

    def merge(a: Any, b: Any) -> Any:
        """Fills the MaskedNode subtrees of one state with the other's values."""
        if _is_masked_node(a):
            return b
        if _is_masked_node(b):
            return a
        a_kids, a_def = jax.tree_util.tree_flatten(a, is_leaf=lambda n: n is not a)
        b_kids, b_def = jax.tree_util.tree_flatten(b, is_leaf=lambda n: n is not b)
        if jax.tree_util.treedef_is_leaf(a_def) or jax.tree_util.treedef_is_leaf(b_def):
            raise ValueError(
                f"trust_ratio_stats: {len(states)} trust-ratio states cover the same "
                "tensor (e.g. two LARS transforms chained); read them from the state."
            )
        if a_def != b_def:
            raise ValueError(
                f"trust_ratio_stats: the state holds {len(states)} trust-ratio states with "
                "different parameter structures; read them from the state one by one."
            )
        return a_def.unflatten([merge(x, y) for x, y in zip(a_kids, b_kids, strict=True)])

    merged = {f: getattr(states[0], f) for f in fields}
    for st in states[1:]:
        merged = {f: merge(merged[f], getattr(st, f)) for f in fields}
    return merged
