"""Multi-layer perceptrons with optional normalization: the small models of the CPU experiments.

On a 2-core CPU, XLA's convolutions run a 4-channel ResNet-8 at about 1,500 images/s
(forward and backward, batch 256), while an MLP with two hidden layers of 256 units trains
at 40,000-90,000 images/s and reaches about 88% on Fashion-MNIST in a few epochs. The
experiments' ``cpu`` presets therefore study large-batch training on these MLPs, which
keeps the grids that the claims ask for (batch sizes up to 8192 over the whole training
set, learning-rate grids, several seeds) inside a few minutes; the ``full`` presets use
the ResNets.

With ``norm="batch"`` every hidden layer is Dense (no bias) -> BatchNorm -> ReLU, so its
weights are scale-invariant, the setting of Page's weight-decay analysis and of LARS's
layer-wise trust ratio. With ``norm="none"`` the Dense layers have a bias.

References:
  LeCun et al., "Efficient BackProp", 1998 (MLPs as the classic small benchmark).
  Ioffe & Szegedy, "Batch Normalization", 2015 (arXiv 1502.03167).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lars_jax.models.base import ModelBase

Array = Any

# name -> number of hidden layers; the hidden width is 256 * width.
MLP_DEPTHS = {"mlp1": 1, "mlp2": 2, "mlp3": 3, "mlp4": 4}
MLP_BASE_WIDTH = 256


class MLP(ModelBase):
    """Flatten -> [Dense -> norm -> ReLU] x depth -> Dense(num_classes).

    Attributes:
      depth: number of hidden layers.
      The other fields are `ModelBase`'s (the ResNets' too): `width` multiplies the hidden
      width (256 units at 1.0); with `norm="none"` the hidden Dense layers have a bias;
      `zero_init_last_bn` zero-initialises the scale of the last hidden norm layer.
    """

    depth: int = 2

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if x.ndim < 2:
            raise ValueError(f"x must have a batch dimension and features, got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x must be a float array (normalized images), got {x.dtype}")
        norm = self._norm_factory(train)
        features = max(1, int(round(MLP_BASE_WIDTH * self.width)))
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i in range(self.depth):
            x = nn.Dense(features, use_bias=self.norm == "none", dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"Dense_{i}")(x)
            x = norm(features, zero_init=self.zero_init_last_bn and i == self.depth - 1)(x)
            x = nn.relu(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="head")(x)
        return logits.astype(jnp.float32)
