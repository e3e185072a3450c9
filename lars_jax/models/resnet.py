"""Flax (linen) ResNets for CIFAR-size and ImageNet-size inputs.

Families:
  * `CifarResNet` (ResNet-8/20/32/56): He et al. 2016, section 4.2: a 3x3 conv with 16
    channels, three stages of n = (depth - 2) / 6 basic blocks with 16, 32, 64 channels
    (stride 2 at the start of stages 2 and 3), global average pooling, a dense layer.
    Shortcuts that change shape use option A of the paper (parameter-free: stride-2
    subsampling and zero-padding of the new channels) by default; `shortcut="B"` uses
    1x1 projections.
  * `ResNet18` (CIFAR variant): 3x3 stem with 64 channels and no max-pool, four stages of two
    basic blocks with 64, 128, 256, 512 channels, projection shortcuts.
  * `ResNet9`: the DAWNBench network of Page ("How to train your ResNet", 2018): prep conv
    64, layer1 conv 128 + max-pool + residual(2 x conv 128), layer2 conv 256 + max-pool,
    layer3 conv 512 + max-pool + residual(2 x conv 512), global max-pool, dense, and the
    logits multiplied by 0.125.
  * `ResNet50` (v1.5): 7x7/2 stem, 3x3/2 max-pool, bottleneck blocks [3, 4, 6, 3] with
    stride on the 3x3 convolution, projection shortcuts, global average pooling.

Every model takes float NHWC images of any size and channel count (global pooling at the
end), and returns float32 logits. `width` multiplies every channel count (rounded, >= 1).
Computation runs in `dtype` (float32 or bfloat16) while parameters stay `param_dtype`
(float32); `conv_impl` chooses how the convolutions compute (`lars_jax.models.conv`).
With `norm="none"` the convolutions get a bias instead of a normalization layer.
`zero_init_last_bn` sets the scale of the last normalization layer of each residual block
to zero, so that each block starts as the identity (Goyal et al. 2017).

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  arXiv 1512.03385.
  Page, "How to train your ResNet", myrtle.ai blog, 2018.
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
  arXiv 1706.02677.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lars_jax.models.base import ModelBase
from lars_jax.models.conv import CONV_IMPLS, conv_general_dilated_for
from lars_jax.models.mlp import MLP, MLP_DEPTHS
from lars_jax.models.normalization import NORM_KINDS

Array = jax.Array
ModuleDef = Any

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class _Base(ModelBase):
    """Shared configuration of every ResNet in this module (`ModelBase`'s fields)."""

    def _layers(self, train: bool) -> tuple[ModuleDef, Callable[..., Any], ModuleDef]:
        if self.norm not in NORM_KINDS:
            raise ValueError(f"norm must be one of {NORM_KINDS}, got {self.norm!r}")
        conv = functools.partial(
            nn.Conv,
            use_bias=self.norm == "none",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=conv_kernel_init,
            conv_general_dilated=conv_general_dilated_for(self.conv_impl),
        )
        norm = self._norm_factory(train)
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        return conv, norm, dense

    def _check(self, x: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC (4 dims), got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x must be a float array (normalized images), got {x.dtype}")
        return x.astype(self.dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, figure 2)."""

    features: int
    strides: int
    conv: ModuleDef
    norm: Callable[..., Any]
    shortcut: str = "B"
    zero_init_last: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        f, s = self.features, self.strides
        y = self.conv(f, (3, 3), (s, s), padding=((1, 1), (1, 1)))(x)
        y = nn.relu(self.norm(f)(y))
        y = self.conv(f, (3, 3), padding=((1, 1), (1, 1)))(y)
        y = self.norm(f, zero_init=self.zero_init_last)(y)
        if x.shape != y.shape:
            if self.shortcut == "A":
                x = x[:, ::s, ::s, :]
                extra = f - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                x = self.conv(f, (1, 1), (s, s), name="proj_conv")(x)
                x = self.norm(f)(x)
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1, 3x3 (strided: v1.5), 1x1 (x4 channels) convolutions with a residual connection."""

    features: int
    strides: int
    conv: ModuleDef
    norm: Callable[..., Any]
    zero_init_last: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        f, s = self.features, self.strides
        y = nn.relu(self.norm(f)(self.conv(f, (1, 1))(x)))
        y = self.conv(f, (3, 3), (s, s), padding=((1, 1), (1, 1)))(y)
        y = nn.relu(self.norm(f)(y))
        y = self.conv(4 * f, (1, 1))(y)
        y = self.norm(4 * f, zero_init=self.zero_init_last)(y)
        if x.shape != y.shape:
            x = self.conv(4 * f, (1, 1), (s, s), name="proj_conv")(x)
            x = self.norm(4 * f)(x)
        return nn.relu(x + y)


class CifarResNet(_Base):
    """ResNet-(6n+2) for 32x32 images, 16-32-64 channels (He et al. 2016, section 4.2).

    Attributes:
      depth: 6n + 2 (8, 20, 32, 56, 110, ...).
      shortcut: "A" (parameter-free, as in the paper) or "B" (1x1 projections).
    """

    depth: int = 20
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        if (self.depth - 2) % 6 or self.depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {self.depth}")
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
        conv, norm, dense = self._layers(train)
        x = self._check(x)
        c0 = _ch(16, self.width)
        x = conv(c0, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv")(x)
        x = nn.relu(norm(c0)(x))
        n = (self.depth - 2) // 6
        for stage, c in enumerate((16, 32, 64)):
            for i in range(n):
                x = BasicBlock(
                    _ch(c, self.width),
                    2 if stage > 0 and i == 0 else 1,
                    conv,
                    norm,
                    shortcut=self.shortcut,
                    zero_init_last=self.zero_init_last_bn,
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return dense(self.num_classes)(x).astype(jnp.float32)


class ResNet18(_Base):
    """ResNet-18 with a 3x3 stem and no max-pool, for 32x32 inputs (64-128-256-512)."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        conv, norm, dense = self._layers(train)
        x = self._check(x)
        c0 = _ch(64, self.width)
        x = conv(c0, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv")(x)
        x = nn.relu(norm(c0)(x))
        for stage, nblocks in enumerate(self.stage_sizes):
            for i in range(nblocks):
                x = BasicBlock(
                    _ch(64 * 2**stage, self.width),
                    2 if stage > 0 and i == 0 else 1,
                    conv,
                    norm,
                    shortcut="B",
                    zero_init_last=self.zero_init_last_bn,
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return dense(self.num_classes)(x).astype(jnp.float32)


class ResNet9(_Base):
    """Page's DAWNBench ResNet-9 (conv-norm-relu units, max-pools, logits scaled by 0.125)."""

    logit_scale: float = 0.125

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        conv, norm, dense = self._layers(train)
        x = self._check(x)

        def unit(x: Array, c: int, zero_init: bool = False) -> Array:
            c = _ch(c, self.width)
            x = conv(c, (3, 3), padding=((1, 1), (1, 1)))(x)
            return nn.relu(norm(c, zero_init=zero_init)(x))

        def pool(x: Array) -> Array:
            return nn.max_pool(x, (2, 2), strides=(2, 2))

        z = self.zero_init_last_bn
        x = unit(x, 64)
        x = pool(unit(x, 128))
        x = x + unit(unit(x, 128), 128, zero_init=z)
        x = pool(unit(x, 256))
        x = pool(unit(x, 512))
        x = x + unit(unit(x, 512), 512, zero_init=z)
        x = jnp.max(x, axis=(1, 2))
        x = dense(self.num_classes, use_bias=False)(x)
        return (x * self.logit_scale).astype(jnp.float32)


class ResNet50(_Base):
    """ResNet-50 v1.5 for ImageNet (7x7/2 stem, max-pool, bottlenecks, stride on the 3x3)."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        conv, norm, dense = self._layers(train)
        x = self._check(x)
        c0 = _ch(64, self.width)
        x = conv(c0, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
        x = nn.relu(norm(c0)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, nblocks in enumerate(self.stage_sizes):
            for i in range(nblocks):
                x = BottleneckBlock(
                    _ch(64 * 2**stage, self.width),
                    2 if stage > 0 and i == 0 else 1,
                    conv,
                    norm,
                    zero_init_last=self.zero_init_last_bn,
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return dense(self.num_classes)(x).astype(jnp.float32)


_CIFAR_DEPTHS = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet56": 56}
MODEL_NAMES = ("resnet8", "resnet20", "resnet32", "resnet56", "resnet18", "resnet9", "resnet50",
               "mlp1", "mlp2", "mlp3", "mlp4")


def create_model(
    name: str,
    *,
    num_classes: int,
    norm: str = "batch",
    bn_axis_name: str | None = None,
    bn_ghost_size: int | None = None,
    bn_momentum: float = 0.9,
    group_norm_groups: int = 8,
    width: float = 1.0,
    dtype: Any = jnp.float32,
    zero_init_last_bn: bool = False,
    conv_impl: str = "xla",
    **kwargs: Any,
) -> nn.Module:
    """Builds a ResNet (or, for the CPU experiments, an MLP) by name.

    Apply as `model.apply(variables, x, train=True, mutable=["batch_stats"])` in training
    (with BatchNorm) and `model.apply(variables, x, train=False)` in evaluation; `x` is a
    float NHWC batch, the result float32 logits of shape (batch, num_classes).

    Args:
      name: one of `MODEL_NAMES`.
      num_classes: number of output logits.
      norm: "batch", "group" or "none" (identity; convolutions then have a bias).
      bn_axis_name: mapped axis name over which BatchNorm averages its statistics (for
        data-parallel training under `jax.shard_map` / `pmap`); None: per-device statistics.
      bn_ghost_size: BatchNorm statistics over contiguous sub-batches of this many examples
        (the per-device batch must be divisible by it); None: the whole (per-device) batch.
      bn_momentum: BatchNorm running-average momentum.
      group_norm_groups: GroupNorm groups (gcd with the channel count is used).
      width: channel multiplier (e.g. 0.5 gives 8-16-32 for the CIFAR family; for the MLPs
        "mlp<k>" with k hidden layers, the hidden width is 256 * width).
      dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters stay float32.
      zero_init_last_bn: zero-initialise the scale of the last norm layer in each block.
      conv_impl: how the ResNets' `nn.Conv` layers compute: "xla" (`lax.conv_general_dilated`)
        or "patches" (`lars_jax.models.conv.patch_conv_general_dilated`: unfolded patches
        times the kernel, the same result; the layers stay `nn.Conv` with the same
        parameters, so per-example norms and checkpoints work with either). Ignored by
        the MLPs.
      **kwargs: further attributes of the model class (e.g. `shortcut="B"` for the CIFAR
        family, `bn_epsilon`).

    Returns:
      An unbound `flax.linen.Module`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = create_model("resnet8", num_classes=10, width=0.5)
      >>> x = jnp.zeros((2, 28, 28, 1))
      >>> init = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))
      >>> variables = init(x)
      >>> train_fwd = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
      >>> logits, updates = jax.jit(train_fwd)(variables, x)
      >>> logits.shape, logits.dtype
      ((2, 10), dtype('float32'))

      (An "rbg" key only because the default threefry keys make XLA:CPU compile the
      initialisers slowly; any key works.)

    References:
      He et al. 2016, arXiv 1512.03385; Page 2018 (ResNet-9).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    if norm not in NORM_KINDS:
        raise ValueError(f"norm must be one of {NORM_KINDS}, got {norm!r}")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if bn_ghost_size is not None and (int(bn_ghost_size) != bn_ghost_size or bn_ghost_size < 1):
        raise ValueError(f"bn_ghost_size must be a positive integer or None, got {bn_ghost_size}")
    common = dict(
        num_classes=int(num_classes),
        width=float(width),
        norm=norm,
        bn_axis_name=bn_axis_name,
        bn_ghost_size=bn_ghost_size,
        bn_momentum=bn_momentum,
        group_norm_groups=group_norm_groups,
        zero_init_last_bn=zero_init_last_bn,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_impl=conv_impl,
        **kwargs,
    )
    if name in MLP_DEPTHS:
        return MLP(depth=MLP_DEPTHS[name], **common)
    if name in _CIFAR_DEPTHS:
        return CifarResNet(depth=_CIFAR_DEPTHS[name], **common)
    cls = {"resnet18": ResNet18, "resnet9": ResNet9, "resnet50": ResNet50}[name]
    return cls(**common)
