"""A float64 NumPy reference of LARS, LARC and CLARS for property tests of your own chains.

The reference is written from You et al.'s Algorithm 1 with plain NumPy loops, so it
shares no code with :mod:`lars_jax.trust_ratio` or optax: compare any optimizer built
from lars_jax (or your own chain that should behave like one) against it. Per tensor::

    ratio = tc * ||w|| / (||g|| + wd * ||w|| + eps)            denominator="paper"
    ratio = tc * ||w|| / (||g + wd * w|| + eps)                denominator="optax"
    ratio = tc * ||w|| / (mean_i ||g_i|| + wd * ||w|| + eps)   CLARS (given the norms)
    ratio = 1 if a norm is 0;  NaN if a norm is not finite;  min(ratio, clip) for LARC
    masked:   v = m * v + lr * ratio * (g + wd * w)
    unmasked: v = m * v + lr * g
    w = w - v              (Nesterov: w - (m * v + lr * u))

:func:`reference_trust_ratio` and :func:`reference_lars_step` work on single tensors and
lists of tensors; :func:`reference_lars_updates` runs several steps on pytrees; and
:func:`assert_matches_reference` runs an optax transformation next to it and compares
with :func:`chex.assert_trees_all_close`.

Examples:
  >>> import jax.numpy as jnp, lars_jax
  >>> from lars_jax import testing
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  >>> grads = [{"w": jnp.full((3, 2), 0.1), "b": jnp.ones(2)}] * 3
  >>> testing.assert_matches_reference(
  ...     lars_jax.lars(0.5, weight_decay=1e-3, trust_coefficient=0.02), params, grads,
  ...     learning_rate=0.5, weight_decay=1e-3, trust_coefficient=0.02, momentum=0.9)

References:
  You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
  <https://arxiv.org/abs/1708.03888>`_, 2017 (Algorithm 1).

  Huo, Gu, Huang, `Large Batch Training Does Not Need Warmup
  <https://arxiv.org/abs/2002.01576>`_, 2020 (CLARS).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "assert_matches_reference",
    "reference_lars_step",
    "reference_lars_updates",
    "reference_norm",
    "reference_trust_ratio",
]


def _as64(x: Any) -> np.ndarray:
    """``x`` in float64, or complex128 for complex ``x`` (never dropping imaginary parts)."""
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def reference_norm(x: Any) -> float:
    """``||x|| = sqrt(sum |x|^2)`` in float64, real also for complex ``x`` (NaN/Inf propagate)."""
    return float(np.sqrt(np.sum(np.abs(_as64(x)) ** 2)))


def reference_trust_ratio(
    w: Any, g: Any, *, weight_decay: float, trust_coefficient: float, eps: float = 0.0,
    denominator: str = "paper", clip: float | None = None, grad_norm: float | None = None,
) -> float:
    """One tensor's trust ratio in float64.

    Args:
      w: the parameter tensor.
      g: its gradient.
      weight_decay: ``wd``.
      trust_coefficient: ``tc``.
      eps: added to the denominator.
      denominator: ``"paper"`` or ``"optax"``.
      clip: LARC's upper bound of the ratio, or None.
      grad_norm: replaces ``||g||`` in the paper form (CLARS: ``mean_i ||g_i||``).

    Returns:
      The ratio: 1 where ``||w||`` or the gradient-norm term is 0, NaN where either is
      not finite.
    """
    w = _as64(w)
    g = _as64(g)
    wd, tc = float(weight_decay), float(trust_coefficient)
    wn = reference_norm(w)
    if denominator == "paper":
        gn = reference_norm(g) if grad_norm is None else float(grad_norm)
        denom = gn + wd * wn + eps
    elif denominator == "optax":
        gn = reference_norm(g + wd * w)
        denom = gn + eps
    else:
        raise ValueError(f"`denominator` must be 'paper' or 'optax', got {denominator!r}.")
    if not (np.isfinite(wn) and np.isfinite(gn)):
        return float("nan")
    if wn == 0.0 or gn == 0.0:
        return 1.0
    r = tc * wn / denom
    return min(r, clip) if clip is not None else r


def reference_lars_step(
    ws: Sequence[Any], gs: Sequence[Any], vs: Sequence[Any], *,
    learning_rate: float, weight_decay: float, trust_coefficient: float, momentum: float,
    mask: Sequence[bool], nesterov: bool = False, eps: float = 0.0,
    denominator: str = "paper", clip: float | None = None,
    grad_norms: Sequence[float | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """One step of Algorithm 1 on lists of tensors.

    Args:
      ws: parameter tensors.
      gs: their gradients.
      vs: momentum buffers (zeros before the first step).
      learning_rate: ``lr`` of this step.
      weight_decay: ``wd`` of this step (masked tensors only).
      trust_coefficient: ``tc``.
      momentum: ``m``.
      mask: per tensor, whether it gets weight decay and the trust ratio.
      nesterov: Nesterov momentum.
      eps: added to the ratio's denominator.
      denominator: ``"paper"`` or ``"optax"``.
      clip: LARC's bound, or None.
      grad_norms: per tensor, ``mean_i ||g_i||`` for CLARS (None: ``||g||``).

    Returns:
      ``(new_ws, new_vs, updates)`` as float64 arrays; ``updates = new_ws - ws``.
    """
    new_w, new_v, upd = [], [], []
    grad_norms = grad_norms if grad_norms is not None else [None] * len(ws)
    lr, wd = float(learning_rate), float(weight_decay)
    for w, g, v, m_, gn in zip(ws, gs, vs, mask, grad_norms, strict=True):
        w = _as64(w)
        g = _as64(g)
        v = _as64(v)
        if m_:
            r = reference_trust_ratio(
                w, g, weight_decay=wd, trust_coefficient=trust_coefficient, eps=eps,
                denominator=denominator, clip=clip, grad_norm=gn,
            )
            u = lr * r * (g + wd * w)
        else:
            u = lr * g
        v = momentum * v + u
        step = momentum * v + u if nesterov else v
        new_w.append(w - step)
        new_v.append(v)
        upd.append(-step)
    return new_w, new_v, upd


def _mask_leaves(mask: Any, params: Any) -> list[bool]:
    if mask is None:
        return [np.ndim(x) > 1 for x in jax.tree.leaves(params)]
    if callable(mask):
        mask = mask(params)
    treedef = jax.tree.structure(params)
    # A mask may be a prefix of the params' structure: broadcast it to every leaf.
    full = jax.tree.map(lambda m, p: jax.tree.map(lambda _: bool(m), p), mask, params)
    return [bool(x) for x in treedef.flatten_up_to(full)]


def reference_lars_updates(
    params: Any, grads_per_step: Sequence[Any], *,
    learning_rate: float | Callable[[int], float],
    weight_decay: float | Callable[[int], float] = 0.0,
    trust_coefficient: float = 0.001, momentum: float = 0.9, nesterov: bool = False,
    eps: float = 0.0, denominator: str = "paper", clip: float | None = None,
    mask: Any = None, per_example_norms_per_step: Sequence[Any] | None = None,
) -> list[Any]:
    """Runs Algorithm 1 for several steps on pytrees; returns each step's updates.

    The arguments follow :func:`lars_jax.lars` (and :func:`lars_jax.clars` when
    ``per_example_norms_per_step`` is given).

    Args:
      params: initial parameters (a pytree of arrays).
      grads_per_step: one gradient pytree per step.
      learning_rate: a number or a schedule ``step -> lr``.
      weight_decay: a number or a schedule.
      trust_coefficient: ``tc``.
      momentum: ``m``.
      nesterov: Nesterov momentum.
      eps: added to the ratio's denominator.
      denominator: ``"paper"`` or ``"optax"``.
      clip: LARC's bound, or None.
      mask: ``None`` (tensors with ``ndim > 1``), a pytree of booleans (or a prefix), or
        a callable returning one.
      per_example_norms_per_step: for CLARS, one pytree per step of per-example norms
        (leaves of shape ``(n,)``); their mean replaces ``||g||``.

    Returns:
      A list with one float64 update pytree per step (``params_{t+1} - params_t``).
    """
    leaves, treedef = jax.tree.flatten(params)
    ws = [_as64(w) for w in leaves]
    vs = [np.zeros_like(w) for w in ws]
    mask_list = _mask_leaves(mask, params)
    at = lambda s, t: float(s(t)) if callable(s) else float(s)
    out = []
    for t, grads in enumerate(grads_per_step):
        gs = treedef.flatten_up_to(grads)
        gn = None
        if per_example_norms_per_step is not None:
            norms = treedef.flatten_up_to(per_example_norms_per_step[t])
            gn = [float(np.mean(np.asarray(n, np.float64))) for n in norms]
        ws, vs, upd = reference_lars_step(
            ws, gs, vs, learning_rate=at(learning_rate, t), weight_decay=at(weight_decay, t),
            trust_coefficient=trust_coefficient, momentum=momentum, mask=mask_list,
            nesterov=nesterov, eps=eps, denominator=denominator, clip=clip, grad_norms=gn,
        )
        out.append(treedef.unflatten(upd))
    return out


def assert_matches_reference(
    tx: Any, params: Any, grads_per_step: Sequence[Any], *, rtol: float = 1e-5,
    atol: float = 1e-6, per_example_norms_per_step: Sequence[Any] | None = None,
    **hyperparams: Any,
) -> None:
    """Runs ``tx`` for several steps and checks each update against the float64 reference.

    Args:
      tx: an optax transformation that should implement LARS/LARC/CLARS with
        ``hyperparams`` (including the learning rate and momentum).
      params: initial parameters.
      grads_per_step: one gradient pytree per step (the same gradients are given to
        ``tx`` and the reference, whatever the parameters become).
      rtol: relative tolerance of :func:`chex.assert_trees_all_close`.
      atol: absolute tolerance.
      per_example_norms_per_step: for CLARS, passed to ``tx.update`` as
        ``per_example_norms`` and to the reference.
      **hyperparams: keyword arguments of :func:`reference_lars_updates`
        (``learning_rate``, ``weight_decay``, ``trust_coefficient``, ``momentum``...).

    Raises:
      AssertionError: naming the step whose updates differ.
    """
    import chex  # noqa: PLC0415 - test-time dependency (installed with optax)

    want = reference_lars_updates(
        params, grads_per_step, per_example_norms_per_step=per_example_norms_per_step,
        **hyperparams,
    )
    state = tx.init(params)
    p = params
    for t, grads in enumerate(grads_per_step):
        extra = {}
        if per_example_norms_per_step is not None:
            extra["per_example_norms"] = per_example_norms_per_step[t]
        updates, state = tx.update(grads, state, p, **extra)
        got = jax.tree.map(lambda u: np.asarray(u, np.float64), updates)
        try:
            chex.assert_trees_all_close(got, want[t], rtol=rtol, atol=atol)
        except AssertionError as e:
            raise AssertionError(f"step {t}: updates differ from the reference: {e}") from e
        p = jax.tree.map(lambda w, u: w + u, p, updates)
