"""Ready-made optimizers: LARS, LARC, CLARS and momentum SGD, with You et al.'s semantics.

Algorithm 1 of You, Gitman and Ginsburg (2017), per parameter tensor ``w``::

    for t = 0, 1, ...:
        g      = gradient of the mini-batch loss at w
        if mask(w):                                   # kernels (ndim > 1) by default
            ratio = tc * ||w|| / (||g|| + wd * ||w|| + eps)   (1 if a norm is 0)
            u     = ratio * (g + wd * w)
        else:                                         # biases, BatchNorm scale/offset
            u     = g                                  # no weight decay, no trust ratio
        v      = m * v + lr_t * u                     # lr inside the momentum buffer
        w      = w - v                                # (Nesterov: w - (m * v + lr_t * u))

built as ``optax.chain(optax.masked(trust ratio, mask), optax.scale_by_learning_rate,
optax.trace)``: the learning rate is applied *before* the momentum trace, as in
``optax.lars`` and the paper (so a changing ``lr_t`` only affects new gradients).
:func:`larc` clips the ratio at 1 and :func:`clars` replaces ``||g||`` by the mean of
per-example gradient norms (exact rule unverified, see
:func:`lars_jax.scale_by_clars_trust_ratio`).

All optimizers work under :func:`jax.jit` and :func:`optax.inject_hyperparams`
(e.g. ``optax.inject_hyperparams(lars)(learning_rate=schedule, weight_decay=schedule)``).
Pass a callable ``mask`` (or ``weight_decay_mask``/``trust_ratio_mask``) to
``inject_hyperparams`` as a static argument (``static_args=("mask",)``), otherwise optax
takes it for a schedule; a ``mask`` that
comes out as ``False`` (and :func:`lars_jax.default_mask` called with a step count)
raises instead of silently turning LARS off. For gradient accumulation with CLARS use
:func:`multi_steps`, which averages ``per_example_norms`` over the micro-batches
(``optax.MultiSteps`` alone would use the last micro-batch's norms only).

References:
  You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
  <https://arxiv.org/abs/1708.03888>`_, 2017.

  Huo, Gu, Huang, `Large Batch Training Does Not Need Warmup
  <https://arxiv.org/abs/2002.01576>`_, 2020.

  Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
  <https://arxiv.org/abs/1706.02677>`_, 2017.

  MLPerf Training ResNet-50 LARS reference (mlcommons/training_results_v0.7, Google JAX).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lars_jax.masks import MaskOrFn, check_trust_ratio_mask, default_mask, resolve_mask
from lars_jax.trust_ratio import (
    _check_inexact,
    _is_zero_constant,
    check_momentum,
    check_non_negative,
    scale_by_clars_trust_ratio,
    scale_by_lars_trust_ratio,
)


def _momentum_and_lr(
    learning_rate: optax.ScalarOrSchedule, momentum: Any, nesterov: bool
) -> list[optax.GradientTransformation]:
    check_non_negative("learning_rate", learning_rate)
    check_momentum(momentum)
    return [
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=nesterov),
    ]


def _refuse_non_float(
    tx: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` (same state) that refuses integer or boolean params and updates, by dtype.

    ``optax.apply_updates`` would truncate their steps; tensors outside the trust-ratio
    mask never reach the trust-ratio transform's own check, so the whole chain checks.
    """

    def init_fn(params: optax.Params) -> optax.OptState:
        _check_inexact(params, "params")
        return tx.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        _check_inexact(updates, "updates")
        if params is not None:
            _check_inexact(params, "params")
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_mask_value(name: str, value: Any) -> None:
    """Refuses numbers where a mask is expected (e.g. a trust coefficient passed by position)."""
    if isinstance(value, (int, float, complex, np.number)) and not isinstance(
        value, (bool, np.bool_)
    ):
        raise ValueError(
            f"`{name}` must be a bool, a pytree of bools like the params, or a callable "
            f"returning one; got {value!r}."
        )


def _lars_masks(
    denominator: str, mask: MaskOrFn | None, weight_decay_mask: MaskOrFn | None,
    trust_ratio_mask: MaskOrFn | None,
) -> tuple[MaskOrFn | None, MaskOrFn]:
    """``(separate weight-decay mask or None, trust-ratio mask)`` from lars's mask arguments.

    ``None`` first: weight decay goes with the trust ratio (one transform, one mask).
    """
    _check_mask_value("weight_decay_mask", weight_decay_mask)
    _check_mask_value("trust_ratio_mask", trust_ratio_mask)
    _check_mask_value("mask", mask)
    if weight_decay_mask is None:
        weight_decay_mask = True  # optax.add_decayed_weights(mask=None): every tensor
    if trust_ratio_mask is None:
        raise ValueError("`trust_ratio_mask` must be a bool, a pytree of bools or a callable.")
    check_trust_ratio_mask(trust_ratio_mask, name="trust_ratio_mask")
    optax_masks = weight_decay_mask is not True or trust_ratio_mask is not True
    if mask is not None:
        check_trust_ratio_mask(mask)
        if optax_masks:
            raise ValueError(
                "pass either `mask` (weight decay and trust ratio together) or optax.lars's "
                "`weight_decay_mask`/`trust_ratio_mask`, not both."
            )
        return None, mask
    if denominator != "optax":
        if optax_masks:
            raise ValueError(
                "`weight_decay_mask`/`trust_ratio_mask` (optax.lars's separate masks) need "
                "denominator='optax'; the paper form couples the two, use `mask`."
            )
        return None, default_mask
    if weight_decay_mask is trust_ratio_mask:
        return None, trust_ratio_mask
    return weight_decay_mask, trust_ratio_mask


def _layerwise(
    ratio: optax.GradientTransformation, ratio_mask: MaskOrFn,
    learning_rate: optax.ScalarOrSchedule, momentum: Any, nesterov: bool, *,
    decay: optax.GradientTransformation | None = None, mask_extra_args: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The chain behind lars/larc/clars: [decay], masked trust ratio, learning rate, trace."""
    tail = _momentum_and_lr(learning_rate, momentum, nesterov)
    head = [] if decay is None else [decay]
    masked = optax.masked(ratio, resolve_mask(ratio_mask),
                          mask_compatible_extra_args=mask_extra_args)
    return _refuse_non_float(optax.chain(*head, masked, *tail))


def lars(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn | None = True,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 0.0,
    trust_ratio_mask: MaskOrFn | None = True,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    *,
    denominator: str = "paper",
    clip: jax.typing.ArrayLike | None = None,
    mask: MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
    """LARS: layer-wise adaptive rate scaling with momentum (You et al., Algorithm 1).

    Per parameter tensor ``w`` (see the module docstring for the full loop)::

        masked tensors:    v = m * v + lr_t * ratio * (g + wd * w)
                           ratio = tc * ||w|| / (||g|| + wd * ||w|| + eps)
        other tensors:     v = m * v + lr_t * g
        all tensors:       w = w - v

    The positional parameters are ``optax.lars``'s, in its order and with its defaults;
    ``denominator``, ``clip`` and ``mask`` are keyword-only. With
    ``denominator="optax"``, ``lars_jax.lars`` is a drop-in for ``optax.lars``: the same
    call (masks included) gives the same updates, complex parameters too.

    Masks. ``mask`` is lars_jax's one mask: the tensors that get BOTH weight decay and the
    trust ratio (the others get plain momentum SGD, as in MLPerf). ``weight_decay_mask``
    and ``trust_ratio_mask`` are ``optax.lars``'s two masks, with optax's meaning, used
    in the optax form only:

    * ``denominator="paper"`` (default): ``mask`` decides; ``None`` means
      :func:`lars_jax.default_mask` (tensors with ``ndim > 1``). The two optax masks
      must be left at ``True`` (the paper denominator couples weight decay and ratio).
    * ``denominator="optax"`` with ``mask=None``: optax's masks, defaults ``True``: every
      tensor gets weight decay and the ratio, exactly as ``optax.lars``. Pass
      ``mask=lars_jax.default_mask`` to keep biases and normalization parameters out.
    * ``mask`` together with a non-``True`` optax mask is ambiguous and raises.

    Args:
      learning_rate: global rate ``lr_t >= 0``, a float or an optax schedule (e.g.
        :func:`lars_jax.mlperf_lars_schedule`).
      weight_decay: coupled weight decay ``>= 0`` for the masked tensors (float or
        schedule).
      weight_decay_mask: optax form only: tensors that get weight decay (a bool, a pytree
        of bools like the params or a prefix of it, or a callable returning one;
        ``None`` means every tensor, as in optax).
      trust_coefficient: ``tc > 0`` (0.001 in the paper; the MLPerf recipe uses 0.001
        with base rates of 10 to 29).
      eps: ``>= 0``, added to the ratio's denominator.
      trust_ratio_mask: optax form only: tensors that get the trust ratio (as
        ``weight_decay_mask``, not ``False``/``None``).
      momentum: ``m`` in ``[0, 1)``.
      nesterov: Nesterov momentum (``optax.trace(nesterov=True)``).
      denominator: ``"paper"`` (above) or ``"optax"`` (``||g + wd * w||`` in the
        denominator, as ``optax.lars``).
      clip: ``None`` or ``> 0``: LARC clipping of the ratio (see :func:`larc`).
      mask: which tensors get BOTH weight decay and the trust ratio: ``None`` (see
        Masks above), a pytree of booleans like the params (or a prefix of them, e.g.
        ``True``), or a callable returning one.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`. Its state contains a
      :class:`lars_jax.LarsTrustRatioState`; read it with
      :func:`lars_jax.trust_ratio_stats`.

    Raises:
      ValueError: negative ``learning_rate`` (or schedule value at step 0),
        ``weight_decay`` or ``eps``; ``trust_coefficient <= 0``; ``momentum`` outside
        ``[0, 1)``; unknown ``denominator``; ``clip <= 0``; ``mask=False`` or
        ``trust_ratio_mask=False`` (see the module docstring); a number as a mask; the
        mask combinations above; integer params (at ``init``/``update``); at
        ``update``, a ``per_example_norms`` argument (CLARS only).

    Examples:
      Least squares with a weight matrix and a bias; the loss drops quickly:

      >>> import jax, jax.numpy as jnp, optax
      >>> import lars_jax
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> y = x @ jax.random.normal(jax.random.key(1), (8, 2)) + 1.0
      >>> params = {"kernel": 0.1 * jax.random.normal(jax.random.key(2), (8, 2)),
      ...           "bias": jnp.zeros(2)}
      >>> loss = lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2)
      >>> tx = lars_jax.lars(learning_rate=1.0, trust_coefficient=0.1, momentum=0.5)
      >>> state = tx.init(params)
      >>> loss_before = loss(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(50):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 0.1 * loss_before)
      True

      The optax drop-in (same arguments as ``optax.lars``):

      >>> kw = dict(weight_decay=1e-4, weight_decay_mask={"kernel": True, "bias": False})
      >>> ours = lars_jax.lars(0.1, denominator="optax", **kw)
      >>> ref = optax.lars(0.1, **kw)
      >>> g = jax.grad(loss)(params)
      >>> a, _ = ours.update(g, ours.init(params), params)
      >>> b, _ = ref.update(g, ref.init(params), params)
      >>> bool(jnp.allclose(a["kernel"], b["kernel"], rtol=1e-6))
      True

    References:
      You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.

      MLPerf Training ResNet-50 LARS reference (mlcommons/training_results_v0.7).
    """
    decay_mask, ratio_mask = _lars_masks(denominator, mask, weight_decay_mask,
                                         trust_ratio_mask)
    if decay_mask is None:
        ratio = scale_by_lars_trust_ratio(
            weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps,
            denominator=denominator, clip=clip,
        )
        return _layerwise(ratio, ratio_mask, learning_rate, momentum, nesterov)
    # optax.lars's own structure: decay (its mask), then the ratio of g + wd * w.
    check_non_negative("weight_decay", weight_decay)
    ratio = scale_by_lars_trust_ratio(
        trust_coefficient=trust_coefficient, eps=eps, denominator="optax", clip=clip
    )
    decay = optax.add_decayed_weights(weight_decay, mask=decay_mask)
    return _layerwise(ratio, ratio_mask, learning_rate, momentum, nesterov, decay=decay)


def larc(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn | None = True,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 0.0,
    trust_ratio_mask: MaskOrFn | None = True,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    *,
    denominator: str = "paper",
    clip: jax.typing.ArrayLike | None = 1.0,
    mask: MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
    """LARC: LARS whose per-tensor rate never exceeds the global rate.

    Same as :func:`lars` with ``clip=1.0``::

        v = m * v + lr_t * min(ratio, clip) * (g + wd * w)      (masked tensors)

    i.e. the per-tensor rate is ``min(lr_t * ratio, lr_t)``. NVIDIA apex's
    ``LARC(clip=True)`` instead uses ``min(ratio, lr_t)``; the two agree when
    ``lr_t = 1`` or when the ratio exceeds both 1 and ``lr_t`` (see
    :mod:`lars_jax.trust_ratio`).

    Args:
      learning_rate: as in :func:`lars`.
      weight_decay: as in :func:`lars`.
      weight_decay_mask: as in :func:`lars` (optax form only).
      trust_coefficient: as in :func:`lars`.
      eps: as in :func:`lars`.
      trust_ratio_mask: as in :func:`lars` (optax form only).
      momentum: as in :func:`lars`.
      nesterov: as in :func:`lars`.
      denominator: as in :func:`lars`.
      clip: upper bound ``> 0`` of the ratio (default 1.0).
      mask: as in :func:`lars`.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      ValueError: as :func:`lars`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lars_jax
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> y = x @ jax.random.normal(jax.random.key(1), (8, 2))
      >>> params = {"kernel": 0.1 * jax.random.normal(jax.random.key(2), (8, 2))}
      >>> loss = lambda p: jnp.mean((x @ p["kernel"] - y) ** 2)
      >>> tx = lars_jax.larc(learning_rate=0.5, trust_coefficient=0.2, momentum=0.5)
      >>> state, loss_before = tx.init(params), loss(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(50):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 0.1 * loss_before)
      True

    References:
      You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.

      NVIDIA apex, ``apex.parallel.LARC``.
    """
    return lars(
        learning_rate, weight_decay, weight_decay_mask, trust_coefficient, eps,
        trust_ratio_mask, momentum, nesterov, denominator=denominator, clip=clip, mask=mask,
    )


def clars(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    eps: jax.typing.ArrayLike = 0.0,
    denominator: str = "paper",
    clip: jax.typing.ArrayLike | None = None,
    mask: MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
    """CLARS: LARS with the mean per-example gradient norm in the ratio (UNVERIFIED rule).

    As :func:`lars` (paper form, one ``mask``; the arguments after ``weight_decay`` are
    keyword-only), but for the masked tensors::

        ratio = tc * ||w|| / (mean_i ||g_i|| + wd * ||w|| + eps)

    where ``||g_i||`` are that tensor's per-example (or per-micro-batch) gradient
    norms, passed to ``update`` as ``per_example_norms=`` (a pytree like the params
    with leaves of shape ``(n,)``; :mod:`lars_jax.per_example` computes them). The
    exact CLARS rule of Huo, Gu and Huang is UNVERIFIED: see
    :func:`lars_jax.scale_by_clars_trust_ratio`.

    Args:
      learning_rate: as in :func:`lars`.
      weight_decay: as in :func:`lars`.
      trust_coefficient: as in :func:`lars`.
      momentum: as in :func:`lars`.
      nesterov: as in :func:`lars`.
      eps: as in :func:`lars`.
      denominator: only ``"paper"``.
      clip: as in :func:`lars`.
      mask: as in :func:`lars`; the norms of masked-out tensors are ignored (they
        must still be present).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose ``update`` requires the
      keyword argument ``per_example_norms``.

    Raises:
      ValueError: as :func:`lars`; also ``denominator != "paper"`` and, at ``update``,
        missing or mis-shaped ``per_example_norms``.

    Examples:
      Per-example gradient norms of a least-squares problem, by ``vmap``:

      >>> import jax, jax.numpy as jnp, optax
      >>> import lars_jax
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> y = x @ jax.random.normal(jax.random.key(1), (8, 2))
      >>> params = {"kernel": 0.1 * jax.random.normal(jax.random.key(2), (8, 2))}
      >>> loss_i = lambda p, xi, yi: jnp.sum((xi @ p["kernel"] - yi) ** 2)
      >>> loss = lambda p: jnp.mean(jax.vmap(loss_i, (None, 0, 0))(p, x, y))
      >>> def norms(p):
      ...     g_i = jax.vmap(jax.grad(loss_i), (None, 0, 0))(p, x, y)
      ...     return jax.tree.map(lambda g: jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2))), g_i)
      >>> tx = lars_jax.clars(learning_rate=1.0, trust_coefficient=0.1, momentum=0.5)
      >>> state, loss_before = tx.init(params), loss(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params,
      ...                                per_example_norms=norms(params))
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(50):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 0.1 * loss_before)
      True

    References:
      Huo, Gu, Huang, `Large Batch Training Does Not Need Warmup
      <https://arxiv.org/abs/2002.01576>`_, 2020.
    """
    _check_mask_value("mask", mask)
    check_trust_ratio_mask(mask)
    ratio = scale_by_clars_trust_ratio(
        weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps,
        denominator=denominator, clip=clip,
    )
    return _layerwise(ratio, mask, learning_rate, momentum, nesterov, mask_extra_args=True)


def _times(a: optax.ScalarOrSchedule, b: optax.ScalarOrSchedule, sign: float):
    """``sign * a * b`` where either factor may be a schedule."""
    if not callable(a) and not callable(b):
        return sign * a * b
    at = lambda s, count: s(count) if callable(s) else s
    return lambda count: sign * at(a, count) * at(b, count)


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    decoupled_weight_decay: bool = False,
    mask: MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Momentum SGD with coupled or decoupled weight decay on masked tensors.

    Per parameter tensor, with ``d = wd`` on masked tensors and 0 elsewhere::

        coupled   (default):   v = m * v + lr_t * (g + d * w);   w = w - v
        decoupled:             v = m * v + lr_t * g;             w = w - v - lr_t * d * w

    The learning rate sits inside the momentum buffer (as in :func:`lars` and
    Goyal et al.'s eq. 10); with a constant rate this is the same as ``optax.sgd``.
    When the rate changes, Goyal et al.'s "momentum correction" is implicit here.

    Args:
      learning_rate: ``lr_t >= 0``, float or schedule.
      momentum: ``m`` in ``[0, 1)``.
      nesterov: Nesterov momentum.
      weight_decay: ``>= 0``, float or schedule.
      decoupled_weight_decay: apply ``lr_t * wd * w`` outside the momentum buffer
        (SGDW) instead of adding ``wd * w`` to the gradient.
      mask: tensors that get weight decay; as in :func:`lars` (default: ``ndim > 1``).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      ValueError: negative ``learning_rate`` or ``weight_decay``, ``momentum``
        outside ``[0, 1)``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import lars_jax
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> y = x @ jax.random.normal(jax.random.key(1), (8, 2))
      >>> params = {"kernel": jnp.zeros((8, 2))}
      >>> loss = lambda p: jnp.mean((x @ p["kernel"] - y) ** 2)
      >>> tx = lars_jax.sgd(learning_rate=0.05, momentum=0.9, weight_decay=1e-4)
      >>> state, loss_before = tx.init(params), loss(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(50):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 0.1 * loss_before)
      True

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.

      Loshchilov, Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019.
    """
    check_non_negative("weight_decay", weight_decay)
    tail = _momentum_and_lr(learning_rate, momentum, nesterov)
    if not callable(weight_decay) and _is_zero_constant(weight_decay):
        return _refuse_non_float(optax.chain(*tail))
    m = resolve_mask(mask)
    if decoupled_weight_decay:
        decay = optax.add_decayed_weights(_times(learning_rate, weight_decay, -1.0))
        return _refuse_non_float(optax.chain(*tail, optax.masked(decay, m)))
    decay = optax.add_decayed_weights(weight_decay)
    return _refuse_non_float(optax.chain(optax.masked(decay, m), *tail))


class MultiStepsNormsState(NamedTuple):
    """State of :func:`multi_steps`.

    Attributes:
      multi_steps: the wrapped :class:`optax.MultiStepsState`.
      norm_sum: per tensor, the sum of the ``per_example_norms`` seen since the last
        emitted update (scalars like the params).
      norm_count: how many norms each tensor's sum holds (a scalar).
    """

    multi_steps: optax.MultiStepsState
    norm_sum: Any
    norm_count: jax.Array


def multi_steps(
    opt: optax.GradientTransformation,
    every_k_schedule: int | Callable[[jax.Array], jax.Array],
    **multi_steps_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Gradient accumulation (:class:`optax.MultiSteps`) that is correct for CLARS.

    ``optax.MultiSteps(clars(...), k)`` averages the gradients of ``k`` micro-batches but
    passes the inner optimizer only the extra arguments of the *last* call, so CLARS
    would divide by the mean per-example norm of the last micro-batch alone. This
    wrapper keeps the running sum and count of the ``per_example_norms`` of every
    micro-batch since the last emitted update and passes their mean (leaves of shape
    ``(1,)``) on, so the update uses::

        mean over all examples of the k micro-batches of ||g_i||

    which is the CLARS rule for the whole (accumulated) batch. Micro-batches of
    different sizes are weighted by their number of norms. Calls without
    ``per_example_norms`` (LARS, SGD) behave as ``optax.MultiSteps``. A micro-step that
    ``should_skip_update_fn`` skips does not add its norms.

    Args:
      opt: the optimizer to apply every ``k`` micro-steps (e.g. :func:`clars`).
      every_k_schedule: ``k``, an int or a schedule, as in :class:`optax.MultiSteps`.
      **multi_steps_kwargs: further arguments of :class:`optax.MultiSteps`
        (``use_grad_mean``, ``should_skip_update_fn``).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with state
      :class:`MultiStepsNormsState`; its updates are zero except every ``k``-th call.

    Examples:
      >>> import jax.numpy as jnp, lars_jax
      >>> params = {"kernel": jnp.ones((2, 2))}
      >>> tx = lars_jax.multi_steps(lars_jax.clars(1.0, trust_coefficient=1.0), 2)
      >>> state = tx.init(params)
      >>> g = {"kernel": jnp.full((2, 2), 0.5)}
      >>> _, state = tx.update(g, state, params, per_example_norms={"kernel": jnp.array([1.0])})
      >>> u, state = tx.update(g, state, params, per_example_norms={"kernel": jnp.array([3.0])})
      >>> float(lars_jax.trust_ratio_stats(state)["grad_norm"]["kernel"])  # mean of 1 and 3
      2.0

    References:
      Huo, Gu, Huang, `Large Batch Training Does Not Need Warmup
      <https://arxiv.org/abs/2002.01576>`_, 2020.
    """
    inner = optax.MultiSteps(opt, every_k_schedule, **multi_steps_kwargs)

    def init_fn(params):
        zeros = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)
        return MultiStepsNormsState(inner.init(params), zeros, jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None, *, per_example_norms=None, **extra_args):
        if per_example_norms is None:
            new_inner, new_ms = inner.update(updates, state.multi_steps, params, **extra_args)
            return new_inner, state._replace(multi_steps=new_ms)
        try:
            sums = jax.tree.map(
                lambda s, n: s + jnp.sum(jnp.asarray(n, jnp.float32)),
                state.norm_sum, per_example_norms,
            )
        except ValueError as e:
            raise ValueError(
                "`per_example_norms` must have the structure of the params (leaves of "
                f"shape (n,)): {e}"
            ) from e
        count = state.norm_count + jax.tree.leaves(per_example_norms)[0].shape[0]
        mean = jax.tree.map(lambda s: (s / count).reshape(1), sums)
        new_updates, new_ms = inner.update(
            updates, state.multi_steps, params, per_example_norms=mean, **extra_args
        )
        emitted = new_ms.mini_step == 0
        skipped = jnp.logical_and(~emitted, new_ms.mini_step == state.multi_steps.mini_step)
        keep = lambda new, old: jnp.where(emitted, jnp.zeros_like(new),
                                          jnp.where(skipped, old, new))
        new_state = MultiStepsNormsState(
            new_ms, jax.tree.map(keep, sums, state.norm_sum), keep(count, state.norm_count)
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
