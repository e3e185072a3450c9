"""Convolution as unfolded patches times a matrix: a drop-in for `lax.conv_general_dilated`.

`patch_conv_general_dilated` computes the convolution that `flax.linen.Conv` asks of
`lax.conv_general_dilated` (NHWC input, HWIO kernel, explicit or named padding, strides,
kernel dilation) as one matrix product: the padded input is sliced once per kernel offset
(strided slices), the slices are concatenated along the channel axis into a
(batch * positions, kh * kw * c_in) patch matrix, and that matrix is multiplied by the kernel
reshaped to (kh * kw * c_in, c_out). Autodiff then gives matrix products for both gradients
(no transposed or input-dilated convolution) plus pads and adds for the slices.

Why it exists: it was issue 12's lead for XLA:CPU, whose convolutions (and their backward
passes: input gradients of strided convolutions use `lhs_dilation`) are slower than
PyTorch's oneDNN ones, while its matrix products are not. Measured on the 2-core CPU
(BENCHMARKS.md, 2026-12-01) it does NOT pay off there: the ResNet-20 train step at batch 64
is about 2x slower than with `lax.conv_general_dilated`, because XLA:CPU builds the
channel-minor patch concatenation slowly (9 slices of 16 channels: ~10x a plain copy).
So the models default to `conv_impl="xla"`; "patches" is an exact alternative (tests
compare outputs and gradients with `lax.conv_general_dilated`), e.g. for backends or
shapes where the product wins; measure with `benchmarks/bench_conv_leads.py`.

Select it with `flax.linen.Conv(..., conv_general_dilated=patch_conv_general_dilated)`:
the module stays an `nn.Conv` with the same parameters and names (per-example gradient
norms, checkpoints and the PyTorch twin see no difference). `conv_impl` of the lars_jax
models does this for every convolution.

References:
  Chellapilla, Puri, Simard, "High Performance Convolutional Neural Networks for Document
  Processing", IWFHR 2006 (convolution as unfolded patches times a matrix).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "patches")


def patch_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **unused: Any,
) -> jax.Array:
    """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels, as patches @ kernel.

    Args:
      lhs: input, (batch, *spatial, c_in) (channels last).
      rhs: kernel, (*kernel_spatial, c_in, c_out).
      window_strides: stride per spatial dimension.
      padding: "SAME", "VALID" or one (low, high) pair per spatial dimension.
      lhs_dilation: must be None or all ones (input dilation is not supported).
      rhs_dilation: kernel dilation per spatial dimension (None: ones).
      dimension_numbers: must describe channels-last input/output and an HWIO kernel
        (what `flax.linen.Conv` passes), or be None for that layout.
      feature_group_count: must be 1.
      precision: passed to the matrix product.
      **unused: further keyword arguments of `lax.conv_general_dilated` are rejected unless
        None (`preferred_element_type`).

    Returns:
      (batch, *out_spatial, c_out), the convolution in `lhs`'s dtype promoted with `rhs`'s.

    References:
      Chellapilla, Puri, Simard 2006 (unfolded convolution).
    """
    nd = lhs.ndim - 2
    if rhs.ndim != nd + 2:
        raise ValueError(f"rhs must have {nd + 2} dims for a {lhs.ndim}-dim lhs, got {rhs.shape}")
    if feature_group_count != 1:
        raise ValueError(f"feature_group_count must be 1, got {feature_group_count}")
    if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
        raise ValueError(f"lhs_dilation must be all ones, got {lhs_dilation}")
    extra = {k: v for k, v in unused.items() if v is not None}
    if extra:
        raise ValueError(f"unsupported arguments: {sorted(extra)}")
    if dimension_numbers is not None:
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        channels_last = tuple(range(nd + 2))
        want_lhs = (0, nd + 1, *range(1, nd + 1))
        want_rhs = (nd + 1, nd, *range(nd))
        if dn.lhs_spec != want_lhs or dn.out_spec != want_lhs or dn.rhs_spec != want_rhs:
            raise ValueError(
                f"dimension_numbers must be channels-last with an HWIO kernel, got {dn} "
                f"(for {channels_last})"
            )
    kernel_spatial = rhs.shape[:nd]
    c_in, c_out = rhs.shape[nd], rhs.shape[nd + 1]
    if lhs.shape[-1] != c_in:
        raise ValueError(f"lhs has {lhs.shape[-1]} channels, the kernel expects {c_in}")
    strides = tuple(window_strides)
    dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * nd
    in_spatial = lhs.shape[1:-1]
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_spatial, dilation, strict=True)]
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(in_spatial, effective, strides, padding)
    else:
        pads = [tuple(p) for p in padding]
    out_spatial = [
        (n + lo + hi - e) // s + 1
        for n, (lo, hi), e, s in zip(in_spatial, pads, effective, strides, strict=True)
    ]
    dtype = jnp.promote_types(lhs.dtype, rhs.dtype)
    lhs, rhs = lhs.astype(dtype), rhs.astype(dtype)
    batch = lhs.shape[0]
    if any(lo or hi for lo, hi in pads):
        lhs = lax.pad(lhs, jnp.zeros((), dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                                  (0, 0, 0)])
    pieces = []
    for offset in itertools.product(*(range(k) for k in kernel_spatial)):
        start = [o * d for o, d in zip(offset, dilation, strict=True)]
        limit = [b + (n - 1) * s + 1 for b, n, s in zip(start, out_spatial, strides, strict=True)]
        pieces.append(lax.slice(lhs, (0, *start, 0), (batch, *limit, c_in), (1, *strides, 1)))
    patches = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)
    kernel = rhs.reshape(-1, c_out)
    out = jnp.dot(patches.reshape(-1, kernel.shape[0]), kernel, precision=precision)
    return out.reshape(batch, *out_spatial, c_out)


def conv_general_dilated_for(conv_impl: str) -> Any:
    """The `conv_general_dilated` argument of `flax.linen.Conv` for a `conv_impl` name.

    Args:
      conv_impl: "xla" (None: flax's default, `lax.conv_general_dilated`) or "patches"
        (`patch_conv_general_dilated`).

    Returns:
      None or `patch_conv_general_dilated`.

    References:
      Chellapilla, Puri, Simard 2006 (unfolded convolution).
    """
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    return patch_conv_general_dilated if conv_impl == "patches" else None
