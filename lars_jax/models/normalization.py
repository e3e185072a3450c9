"""Normalization layers for the ResNets: BatchNorm (cross-device, ghost), GroupNorm, none.

`make_norm` returns a factory `norm(features, zero_init=False) -> Callable[[x], x]` that the
residual blocks call. Every layer it builds is a standard Flax module (`nn.BatchNorm`,
`nn.GroupNorm`) or `GhostBatchNorm`, a subclass of `nn.BatchNorm` with the same variables
(`params/scale`, `params/bias`, `batch_stats/mean`, `batch_stats/var`), so code that looks for
`nn.BatchNorm` instances (e.g. per-example gradient norms) also finds the ghost variant.

References:
  Ioffe, Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167.
  Hoffer, Hubara, Soudry, "Train longer, generalize better" (ghost batch norm), NeurIPS 2017,
  arXiv 1705.08741.
  Wu, He, "Group Normalization", ECCV 2018, arXiv 1803.08494.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_KINDS = ("batch", "group", "none")

Array = jax.Array
NormFactory = Callable[..., Callable[[Array], Array]]


class GhostBatchNorm(nn.BatchNorm):
    """BatchNorm whose training statistics are taken over contiguous sub-batches ("ghosts").

    The batch axis 0 of size B is split into B // ghost_size groups of `ghost_size`
    consecutive examples; each group is normalized with its own mean and variance (over the
    group's examples and all non-feature axes). With `axis_name`, each ghost's statistics are
    additionally averaged over that named axis (i.e. ghost `k` of every device forms one
    statistics group of `ghost_size * axis_size` examples). The running averages are updated
    with the mean over ghosts of the ghost statistics. In evaluation
    (`use_running_average=True`) it is exactly `nn.BatchNorm`. The variables (names, shapes)
    are those of `nn.BatchNorm` (the module is auto-named `GhostBatchNorm_i`).

    Attributes:
      ghost_size: examples per ghost batch; B must be divisible by it (ValueError otherwise).
      (all other attributes as `flax.linen.BatchNorm`; only `axis=-1` is supported.)
    """

    ghost_size: int | None = None

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Any = None
    ) -> Array:
        use_ra = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if self.ghost_size is None or use_ra:
            return super().__call__(x, use_running_average=use_running_average, mask=mask)
        if mask is not None:
            raise ValueError("mask is not supported by GhostBatchNorm with ghost_size set")
        if self.axis not in (-1, x.ndim - 1):
            raise ValueError(f"axis must be -1 for GhostBatchNorm, got {self.axis}")
        g = int(self.ghost_size)
        b = x.shape[0]
        if g <= 0 or b % g:
            raise ValueError(f"bn_ghost_size={g} must be a positive divisor of the batch size {b}")
        feat = x.shape[-1]
        xg = x.reshape((b // g, g) + x.shape[1:])
        red = tuple(range(1, xg.ndim - 1))
        xf = xg.astype(jnp.promote_types(jnp.float32, x.dtype))
        mean = jnp.mean(xf, axis=red)  # (num_ghosts, C)
        mean2 = jnp.mean(jnp.square(xf), axis=red)
        if self.axis_name is not None and not self.is_initializing():
            mean, mean2 = jax.lax.pmean(
                (mean, mean2), self.axis_name, axis_index_groups=self.axis_index_groups
            )
        var = jnp.maximum(mean2 - jnp.square(mean), 0.0)

        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (feat,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (feat,))
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=0)
            ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var, axis=0)

        shape = (b // g,) + (1,) * (xg.ndim - 2) + (feat,)
        y = (xf - mean.reshape(shape)) * jax.lax.rsqrt(var.reshape(shape) + self.epsilon)
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (feat,), self.param_dtype)
            y = y * scale
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (feat,), self.param_dtype)
            y = y + bias
        dtype = self.dtype or x.dtype
        return y.reshape(x.shape).astype(dtype)


def group_count(features: int, groups: int) -> int:
    """Number of GroupNorm groups actually used: gcd(groups, features) (so it always divides)."""
    return math.gcd(int(groups), int(features))


def make_norm(
    kind: str,
    *,
    train: bool,
    axis_name: str | None = None,
    ghost_size: int | None = None,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    groups: int = 8,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> NormFactory:
    """Returns `norm(features, zero_init=False)` building one normalization layer.

    Args:
      kind: "batch" (`nn.BatchNorm`, or `GhostBatchNorm` when `ghost_size` is set),
        "group" (`nn.GroupNorm` with gcd(groups, features) groups), or "none" (identity; the
        ResNets then give their convolutions a bias instead).
      train: batch statistics (True) or running averages (False) for BatchNorm.
      axis_name: named mapped axis (shard_map / pmap) to average BatchNorm statistics over.
      ghost_size: examples per ghost batch for BatchNorm statistics (None: whole batch).
      momentum: BatchNorm running-average momentum.
      epsilon: added to the variance.
      groups: requested number of GroupNorm groups.
      dtype: compute dtype of the layer output.
      param_dtype: dtype of scale and bias.

    Returns:
      A factory; `zero_init=True` initialises the layer's scale to zero (no-op for "none").
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")
    if ghost_size is not None and (int(ghost_size) != ghost_size or ghost_size <= 0):
        raise ValueError(f"bn_ghost_size must be a positive integer or None, got {ghost_size}")

    def factory(features: int, zero_init: bool = False) -> Callable[[Array], Array]:
        scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
        if kind == "batch":
            common = dict(
                use_running_average=not train,
                momentum=momentum,
                epsilon=epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                axis_name=axis_name,
                scale_init=scale_init,
            )
            if ghost_size is None:
                return nn.BatchNorm(**common)
            return GhostBatchNorm(ghost_size=int(ghost_size), **common)
        if kind == "group":
            return nn.GroupNorm(
                num_groups=group_count(features, groups),
                epsilon=epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                scale_init=scale_init,
            )
        return lambda x: x

    return factory
