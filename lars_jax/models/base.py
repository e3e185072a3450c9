"""The configuration every lars_jax model shares: classes, width, normalization, dtypes.

`ModelBase` holds the dataclass fields common to the ResNets and the MLPs and builds their
normalization layers (`lars_jax.models.make_norm`) from them, so `create_model` passes the
same keyword arguments to every model.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lars_jax.models.normalization import NormFactory, make_norm


class ModelBase(nn.Module):
    """Fields shared by every model of `lars_jax.models` (see `create_model` for each)."""

    num_classes: int = 10
    width: float = 1.0
    norm: str = "batch"
    bn_axis_name: str | None = None
    bn_ghost_size: int | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    group_norm_groups: int = 8
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "xla"  # "xla" or "patches" (lars_jax.models.conv); ResNets only

    def _norm_factory(self, train: bool) -> NormFactory:
        """`norm(features, zero_init=False)` for this model's normalization settings."""
        return make_norm(
            self.norm,
            train=train,
            axis_name=self.bn_axis_name,
            ghost_size=self.bn_ghost_size,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            groups=self.group_norm_groups,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
