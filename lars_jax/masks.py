"""Masks that choose which parameter tensors get weight decay and the trust ratio.

MLPerf's LARS reference, and most large-batch recipes since You et al. (2017),
exclude biases and BatchNorm scales/offsets (every tensor with ``ndim <= 1``)
from both weight decay and layer-wise adaptation: those tensors get plain
momentum SGD. :func:`default_mask` encodes that rule; any pytree of booleans
(or a callable returning one) with the structure of the parameters, or a
prefix of it, can be used instead wherever this library takes a ``mask``.

References:
  You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
  <https://arxiv.org/abs/1708.03888>`_, 2017.

  MLPerf Training, ResNet-50 LARS reference implementations
  (`mlcommons/training_results_v0.7 <https://github.com/mlcommons/training_results_v0.7>`_).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

MaskOrFn = Any | Callable[[optax.Params], Any]


def default_mask(params: optax.Params) -> Any:
    """Marks the tensors with more than one dimension (kernels, embeddings).

    Args:
      params: a pytree of arrays (or of anything with a ``shape``, e.g.
        ``jax.ShapeDtypeStruct``).

    Returns:
      A pytree of Python booleans with the structure of ``params``: ``True``
      for tensors with ``ndim > 1`` (they get weight decay and the trust ratio),
      ``False`` for scalars, biases and normalization scales/offsets.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4), "scale": jnp.ones(())}
      >>> default_mask(params)
      {'bias': False, 'kernel': True, 'scale': False}

    References:
      You, Gitman, Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.
    """
    _reject_step_count(params)
    return jax.tree.map(lambda x: len(np.shape(x)) > 1, params)


_INJECT_HINT = (
    "under optax.inject_hyperparams pass the mask as a static argument: "
    "optax.inject_hyperparams(lars_jax.lars, static_args=('mask',))"
)


def _reject_step_count(params: Any) -> None:
    """Raises when a mask function gets a scalar integer (a step count) instead of params.

    ``optax.inject_hyperparams`` calls every callable hyperparameter that is not in
    ``static_args`` with the step count, as if it were a schedule.
    """
    dtype = getattr(params, "dtype", None)
    if dtype is not None and np.shape(params) == () and np.issubdtype(dtype, np.integer):
        raise ValueError(f"`mask` was called with a step count, not with params: {_INJECT_HINT}.")


def check_trust_ratio_mask(mask: Any, name: str = "mask") -> None:
    """Raises ValueError for a ``False`` mask, which turns the trust ratio off everywhere.

    That is what a callable mask becomes under ``optax.inject_hyperparams`` without
    ``static_args=("mask",)`` (optax calls it with the step count): LARS would silently
    run as momentum SGD. A pytree of booleans that are all False is still accepted.

    Args:
      mask: the mask argument (``mask``, or ``trust_ratio_mask`` of the optax form).
      name: the argument's name, for the message.
    """
    if isinstance(mask, (bool, np.bool_)) and not mask:
        raise ValueError(
            f"`{name}=False` turns the trust ratio off for every tensor (that is momentum "
            f"SGD: use lars_jax.sgd). If you passed a callable mask, {_INJECT_HINT}."
        )


def resolve_mask(mask: MaskOrFn | None) -> MaskOrFn:
    """Returns ``default_mask`` for ``None`` and ``mask`` unchanged otherwise.

    Args:
      mask: ``None``, a pytree of booleans (or a prefix of the params' structure),
        a single boolean, or a callable mapping params to such a pytree.

    Returns:
      A mask accepted by :func:`optax.masked`.
    """
    return default_mask if mask is None else mask
