"""Multiply-accumulates per example, counted from the traced model (for MFU).

`count_macs` traces the model's evaluation forward pass for one example with
`jax.make_jaxpr` (no compilation, no FLOPs executed) and adds up the multiply-accumulates of
every `conv_general_dilated` and `dot_general` in the jaxpr, descending into nested jaxprs
(jit, custom_jvp, ...). Normalization, activations, pooling and additions are not counted,
which is the convention of the published counts (He et al. 2016 quote ResNet-50 as 3.8
GFLOPs meaning multiply-adds, v1.5 is ~4.1 GMAC; ResNet-20 ~41 MMAC).

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  arXiv 1512.03385 (table 1 and section 4.2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[Any]:
    for v in params.values():
        vals = v if isinstance(v, (tuple, list)) else (v,)
        for item in vals:
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def jaxpr_macs(jaxpr: Any) -> int:
    """Multiply-accumulates of the convolutions and dot products in a (closed) jaxpr."""
    if hasattr(jaxpr, "jaxpr") and not hasattr(jaxpr, "eqns"):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            dn = eqn.params["dimension_numbers"]
            # rhs_spec = (out_feature_dim, in_feature_dim, *spatial_dims)
            rhs_spec = dn.rhs_spec
            k_in = rhs[rhs_spec[1]]
            k_spatial = math.prod(rhs[d] for d in rhs_spec[2:])
            total += math.prod(out) * k_in * k_spatial
        elif name == "dot_general":
            out = eqn.outvars[0].aval.shape
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        for sub in _sub_jaxprs(eqn.params):
            total += jaxpr_macs(sub)
    return int(total)


def count_fn_macs(fn: Callable[..., Any], *args: Any) -> int:
    """Multiply-accumulates of `fn(*args)` (args may be `jax.ShapeDtypeStruct`s)."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args))


@functools.lru_cache(maxsize=64)
def count_macs(
    name: str,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    **model_kwargs: Any,
) -> int:
    """Forward multiply-accumulates per example of a model from `create_model`.

    Args:
      name: a name in `MODEL_NAMES`.
      input_shape: (height, width, channels) of one example.
      num_classes: number of logits.
      **model_kwargs: further `create_model` arguments (e.g. `width=0.5`); must be hashable.

    Returns:
      MACs of the convolutions and dense layers for one example in evaluation mode.

    Example:
      >>> round(count_macs("resnet20") / 1e6, 1)
      40.6

    References:
      He et al. 2016, arXiv 1512.03385.
    """
    from lars_jax.models.resnet import create_model

    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    model = create_model(name, num_classes=num_classes, **model_kwargs)
    x = jax.ShapeDtypeStruct((1,) + input_shape, jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False)
    )
    return count_fn_macs(lambda v, x: model.apply(v, x, train=False), variables, x)


def flops_per_example(
    name: str,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    **model_kwargs: Any,
) -> int:
    """Forward FLOPs per example, 2 * `count_macs` (training step: about 3x this)."""
    return 2 * count_macs(name, tuple(input_shape), num_classes, **model_kwargs)
