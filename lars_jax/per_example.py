"""Per-example (and per-micro-batch) gradient norms at the memory of a plain gradient step.

CLARS divides by the mean over the batch of the per-example gradient norms of every
parameter tensor. ``jax.vmap(jax.grad(...))`` materialises ``B`` copies of the gradient.
:func:`value_grad_and_norms` gets the norms inside the one backward pass a plain
``jax.value_and_grad`` step already makes, and frees every layer's extra work at once:

* Every ``nn.Dense``, ``nn.Conv`` (grouped and depthwise too), ``nn.Embed``,
  ``nn.BatchNorm``, ``nn.GroupNorm`` and ``nn.LayerNorm`` call is intercepted with
  :func:`flax.linen.intercept_methods` (model code unchanged) and run as one
  ``jax.custom_vjp`` function ``tap(layer_params, x, probe)``. Its forward is the layer;
  ``probe`` is a zero array of shape ``(G,)`` per parameter (``G`` = batch size, or the
  number of groups) that the forward ignores. Its backward returns the usual cotangents
  of the parameters and of ``x`` and, as the cotangent of ``probe``, the per-example
  squared norms of that layer's parameter gradients, computed from the layer input ``x``
  (a residual the plain step keeps anyway) and the output cotangent ``d``. So
  ``jax.grad`` with respect to the probes *is* the squared norms, and each layer's
  temporaries (patches, Gram matrices, per-example gradients) die inside its own backward.
* The kernel gradient of example ``i`` is ``G_i = a_i^T d_i`` summed over positions ``t``
  (``a_i`` the unfolded conv input, one kernel offset at a time, never all patches at
  once). Its squared norm is taken per layer by memory (Bu et al. 2022): the *ghost norm*
  ``sum_{t,s} (a_it . a_is)(d_it . d_is)`` from two ``T x T`` Gram matrices when
  ``2 T^2`` is below what the per-example gradients hold at once (``d p`` for a Dense
  layer, ``d p / (kh kw)`` for a conv layer, formed one kernel offset at a time), else
  the per-example gradient of that one layer, whose sum over the batch is then also
  returned as the kernel gradient (autodiff does not compute it a second time). ``T = 1``
  (a Dense layer on ``(B, d)``) is Goodfellow's ``||a_i||^2 ||d_i||^2``.
  Biases: ``sum_t d_it``; an embedding row: ``sum_{t,s} [id_t = id_s] (d_it . d_is)``;
  scale and offset of a normalisation layer: ``sum_t x_hat_it * d_it`` and ``sum_t d_it``,
  with ``x_hat`` recomputed in the backward pass (the forward keeps only ``x``).

Cost: about one extra weight-gradient computation for the ghost-norm layers, for the
"direct" layers the per-example products in place of the kernel gradient (the same
arithmetic, in smaller products: on XLA:CPU up to a few times the time of its convolution
kernel gradient), and for the normalisation layers the normalisation recomputed in the
backward pass (BENCHMARKS.md, issue 27). Memory (XLA's
compiled analysis): the plain step's plus one layer's temporaries at a time; with
BatchNorm even below the plain step, as the normalisation layers keep only their input
(ResNet-20 / ResNet-18 at B=128 and 512 in BENCHMARKS.md; docs/per_example.md).

Semantics:

* Without normalisation layers, or with GroupNorm / LayerNorm (which act on each example
  separately), the norms equal those of ``jax.vmap(jax.grad(per_example_loss))``:
  :func:`per_example_norms_vmap` is that reference.
* With BatchNorm the examples are coupled and a per-example gradient is not uniquely
  defined. The norms returned are those of each example's *contribution* ``B * a_i^T d_i``,
  where the cotangent ``d_i`` already contains BatchNorm's cross-example terms; the
  contributions sum to ``B`` times the batch gradient. ``vmap(grad)`` computes something
  else (BatchNorm over a batch of one).
* Norms are those of the gradient of the example's own loss ``l_i`` (not scaled by
  ``1/B``), so ``mean(norms) >= ||g||`` by the triangle inequality.
* With ``num_groups=k`` (micro-batch mode) the batch is cut into ``k`` contiguous equal
  groups and the norms are those of each group's mean-loss gradient (for ``k`` devices:
  the local gradients before the all-reduce).
* The loss is the mean of the per-example losses (``loss_reduction="mean"``, the default)
  or their sum (``loss_reduction="sum"``); the norms are the same either way.
* Parameter-only terms are exact: a loss that also reads parameters outside the layer
  calls in a term of the parameters alone (an L2 penalty ``wd * sum(p ** 2)``, however
  written) adds that term's gradient ``q`` to every example's gradient: the squared norm of
  example ``i`` is ``|g_i|^2 + 2 g_i . q + |q|^2``, with ``g_i . q`` taken inside the
  layer's backward step (the layer's output tangent in the direction ``q`` against the
  output cotangent). Which parameters a loss reads outside its layer calls, and what that
  read depends on, is read off the traced program (``jax.make_jaxpr``) before the pass. A
  read whose gradient depends on the batch or the activations (tied weights, a parameter
  scaling the logits) raises a ``ValueError`` naming the parameter, as does a penalised
  parameter that reaches its layer transformed (cast, scaled, inside ``nn.remat``).
* Complex parameters or layers raise a ``ValueError`` (LARS itself takes ``|x|^2``).

Dense, Conv and Embed are identified by exact type; normalisation layers also by subclass
(such as a ghost BatchNorm), which must compute ``x_hat * scale + bias`` per feature and give
``x_hat`` when cloned with ``use_scale=False, use_bias=False``. Any other parametrised
module (``nn.DenseGeneral``, ``nn.Einsum``, custom ``self.param`` calls, ``Embed.attend``, a
module called twice) makes a ``ValueError`` that names it, instead of wrong norms.

References:
  Goodfellow, "Efficient per-example gradient computations", arXiv 1510.01799, 2015.
  Li, Tramer, Liang, Hashimoto, "Large language models can be strong differentially
  private learners" (ghost clipping), arXiv 2110.05679, 2021.
  Bu, Mao, Xu, "Scalable and efficient training of large convolutional neural networks
  with differential privacy" (mixed ghost clipping), arXiv 2205.10683, 2022.
  Huo, Gu, Huang, "Large batch training does not need warmup", arXiv 2002.01576, 2020.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import linear as _linear

PyTree = Any

_METHODS = ("auto", "ghost", "direct")
_REDUCTIONS = ("mean", "sum")
# For layers whose per-example kernel gradients are formed ("direct"), take the kernel
# gradient from their sum instead of a second weight-gradient computation by autodiff.
_FUSE_DIRECT = True
# How "direct" conv layers form their per-example kernel gradients: "offsets" (a batched
# matrix product per kernel offset) or "grouped" (one convolution with the batch as
# feature groups, Rochette et al. 2019). Both exact; on XLA:CPU "grouped" made the
# ResNet-20 step slower (BENCHMARKS.md, issue 27), so "offsets" is the default.
_CONV_DIRECT = "offsets"
_DENSE_TYPES = (nn.Dense,)
_CONV_TYPES = (nn.Conv,)
_EMBED_TYPES = (nn.Embed,)
_NORM_TYPES = (nn.BatchNorm, nn.GroupNorm, nn.LayerNorm)
# Positive while a tap runs its own layer (see _apply_fn): such calls are not intercepted.
_IN_TAP = [0]
_SUPPORTED = "nn.Dense, nn.Conv, nn.Embed, nn.BatchNorm, nn.GroupNorm, nn.LayerNorm"


@dataclasses.dataclass
class _Layer:
    """What the discovery pass learns about one intercepted layer call."""

    path: tuple[str, ...]
    kind: str  # "dense", "conv", "embed" or "norm"
    module: nn.Module
    out_shape: jax.ShapeDtypeStruct
    in_shape: tuple[int, ...]
    param_shapes: dict[str, jax.ShapeDtypeStruct] = dataclasses.field(default_factory=dict)
    plan: str = ""  # "norm", "embed", "closed" (T = 1), "ghost" or "direct"


def _layer_kind(module: nn.Module) -> str | None:
    t = type(module)
    if t in _DENSE_TYPES:
        return "dense"
    if t in _CONV_TYPES:
        return "conv"
    if t in _EMBED_TYPES:
        return "embed"
    if isinstance(module, _NORM_TYPES):
        # Subclasses too (e.g. ghost BatchNorm): x_hat is taken from the same module with
        # use_scale=False, use_bias=False, and the output must be x_hat * scale + bias.
        return "norm"
    return None


def _path_str(path: Sequence[str]) -> str:
    return "/".join(path) if path else "<root>"


def _make_interceptor(
    record: Callable[[nn.Module, tuple, dict, Any], Any],
) -> Callable[..., Any]:
    busy = [False]  # set while `record` runs: calls it makes itself are not intercepted

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        kind = _layer_kind(module)
        if busy[0] or _IN_TAP[0] or kind is None or module.is_initializing():
            return next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            if context.method_name == "setup":
                return next_fun(*args, **kwargs)
            raise ValueError(
                f"value_grad_and_norms: {type(module).__name__} at {_path_str(module.path)} "
                f"is used through its method {context.method_name!r}; only __call__ is "
                "supported (its parameter gradients would be missing from the norms)"
            )
        busy[0] = True
        try:
            return record(module, args, kwargs, next_fun)
        finally:
            busy[0] = False

    return interceptor


def _discover(fn: Callable[..., Any], *args, **kwargs) -> list[_Layer]:
    """Traces ``fn`` abstractly and lists the intercepted layer calls in order."""
    layers: list[_Layer] = []

    def record(module, a, kw, next_fun):
        out = next_fun(*a, **kw)
        layers.append(
            _Layer(
                path=tuple(module.path),
                kind=_layer_kind(module),
                module=module.clone(parent=None),
                out_shape=jax.ShapeDtypeStruct(out.shape, out.dtype),
                in_shape=tuple(a[0].shape),
                param_shapes={
                    k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                    for k, v in module.variables.get("params", {}).items()
                },
            )
        )
        return out

    def traced(*a, **kw):
        with nn.intercept_methods(_make_interceptor(record)):
            return fn(*a, **kw)

    jax.eval_shape(traced, *args, **kwargs)
    seen: dict[tuple[str, ...], int] = {}
    for layer in layers:
        seen[layer.path] = seen.get(layer.path, 0) + 1
    repeated = [_path_str(p) for p, n in seen.items() if n > 1]
    if repeated:
        raise ValueError(
            "value_grad_and_norms: module(s) called more than once in one forward pass "
            f"(shared weights are not supported): {repeated}"
        )
    return layers


def _varying_axes(tree: PyTree) -> tuple[str, ...]:
    """Mesh axes (inside ``jax.shard_map``) over which some leaf of ``tree`` varies."""
    axes: set[str] = set()
    for leaf in jax.tree_util.tree_leaves(tree):
        try:
            aval = jax.typeof(leaf)
        except TypeError:
            continue
        mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.9
        axes |= set(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())
    return tuple(sorted(axes))


def _zero_probe(groups: int, axes: tuple[str, ...]) -> jax.Array:
    """A ``(groups,)`` zero probe, varying over the given mesh axes.

    Inside ``jax.shard_map`` a plain ``jnp.zeros`` is replicated, and the gradient with
    respect to a replicated value is summed over the devices: the probe must vary like the
    batch for its cotangent to be this device's squared norms.
    """
    zeros = jnp.zeros((groups,), jnp.float32)
    if axes:
        zeros = jax.lax.pcast(zeros, axes, to="varying")
    return zeros


def _summed_like(extra: jax.Array, like: jax.Array) -> jax.Array:
    """``extra`` (a gradient formed from this device's data) summed like autodiff sums ``like``.

    Inside ``jax.shard_map`` autodiff returns the gradient of a replicated parameter summed
    over the devices; a kernel gradient formed here from this device's activations must be
    summed over the same mesh axes to replace it.
    """
    extra = extra.reshape(like.shape).astype(like.dtype)
    missing = tuple(sorted(set(_varying_axes(extra)) - set(_varying_axes(like))))
    if missing:
        extra = jax.lax.psum(extra, missing)
    return extra


# ---------------------------------------------------------------------------------------
# Per-layer squared norms, computed inside the layer's backward pass.


def _conv_geometry(layer: _Layer) -> tuple[int, int, int]:
    """``(feature groups, d, p)``: per group, the unfolded input width and output width."""
    module = layer.module
    f = module.feature_group_count
    d = layer.in_shape[-1] // f * math.prod(module.kernel_size)
    return f, d, layer.out_shape.shape[-1] // f


def _plan(layer: _Layer, groups: int, method: str) -> str:
    """How one layer's kernel norms are computed: by memory, as Bu et al. choose (ghost if
    the two ``T x T`` Gram matrices are smaller than what "direct" holds at once: ``d p``
    for a Dense layer, one kernel offset's ``d p / (kh kw)`` for a conv layer taken offset by
    offset). "direct" is also the cheaper in arithmetic: its per-example gradients sum to
    the kernel gradient, which autodiff then does not compute."""
    if layer.kind in ("norm", "embed"):
        return layer.kind
    out = layer.out_shape.shape
    t = math.prod(out[1:-1]) * (out[0] // groups)  # positions per group
    if layer.kind == "conv":
        _, d, p = _conv_geometry(layer)
        if not _use_grouped(layer, groups):
            d //= math.prod(layer.module.kernel_size)
    else:
        d, p = layer.in_shape[-1], out[-1]
    if t == 1:
        return "closed"
    if method == "ghost" or (method == "auto" and 2 * t * t < d * p):
        return "ghost"
    return "direct"


def _outer_sq_norms(a: jax.Array, c: jax.Array, plan: str) -> tuple[jax.Array, jax.Array | None]:
    """``||a_g^T c_g||_F^2`` for every g; ``a``: (G, T, d), ``c``: (G, T, p) -> (G,).

    With plan "direct" also returns ``sum_g a_g^T c_g`` (d, p): the layer's kernel gradient.
    """
    if plan == "closed":
        return jnp.sum(a[:, 0] ** 2, axis=-1) * jnp.sum(c[:, 0] ** 2, axis=-1), None
    if plan == "ghost":
        gram_a = jnp.einsum("gtd,gsd->gts", a, a)
        gram_c = jnp.einsum("gtp,gsp->gts", c, c)
        return jnp.sum(gram_a * gram_c, axis=(1, 2)), None
    grads = jnp.einsum("gtd,gtp->gdp", a, c)
    return jnp.sum(grads * grads, axis=(1, 2)), jnp.sum(grads, axis=0)


def _conv_pads(module: nn.Conv, in_spatial: Sequence[int], path: str) -> list[tuple[int, int]]:
    nd = len(in_spatial)
    kernel = tuple(module.kernel_size)
    dil = _as_tuple(module.kernel_dilation, nd)
    strides = _as_tuple(module.strides, nd)
    padding = module.padding
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
            raise ValueError(
                f"value_grad_and_norms: Conv at {path} uses padding={padding!r}; only SAME, "
                "VALID and explicit paddings are supported"
            )
        eff = [(k - 1) * r + 1 for k, r in zip(kernel, dil, strict=True)]
        return list(jax.lax.padtype_to_pads(tuple(in_spatial), eff, strides, padding.upper()))
    pads = _linear.canonicalize_padding(padding, nd)
    return [tuple(p) for p in pads]


def _as_tuple(v: int | Sequence[int] | None, n: int) -> tuple[int, ...]:
    if v is None:
        return (1,) * n
    if isinstance(v, int):
        return (v,) * n
    return tuple(v)


def _check_conv(module: nn.Conv, in_shape: Sequence[int], path: str) -> None:
    """Raises for the Conv configurations whose unfolding is not implemented."""
    nd = len(module.kernel_size)
    if len(in_shape) != nd + 2:
        raise ValueError(
            f"value_grad_and_norms: Conv at {path} got an input of shape {tuple(in_shape)}; "
            f"expected exactly one batch dimension and {nd} spatial dimensions"
        )
    if any(r != 1 for r in _as_tuple(module.input_dilation, nd)) or module.mask is not None:
        raise ValueError(
            f"value_grad_and_norms: Conv at {path} uses input_dilation or a mask (unsupported)"
        )
    _conv_pads(module, in_shape[1:-1], path)


def _conv_offsets(module: nn.Conv, x: jax.Array, out_spatial: Sequence[int], path: str) -> Any:
    """Yields the unfolded conv input one kernel offset at a time: (B, T, Cin) slices."""
    nd = len(module.kernel_size)
    pads = _conv_pads(module, x.shape[1:-1], path)
    strides = _as_tuple(module.strides, nd)
    dil = _as_tuple(module.kernel_dilation, nd)
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    b, c = x.shape[0], x.shape[-1]
    for offset in itertools.product(*(range(k) for k in module.kernel_size)):
        start = [o * r for o, r in zip(offset, dil, strict=True)]
        limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, out_spatial, strides, strict=True)]
        piece = jax.lax.slice(xp, (0, *start, 0), (b, *limit, c), (1, *strides, 1))
        yield piece.reshape(b, -1, c)


def _conv_group_grads(layer: _Layer, x: jax.Array, c: jax.Array, groups: int) -> jax.Array:
    """Every group's kernel gradient, as ONE convolution (Rochette et al. 2019).

    The kernel gradient of a conv is itself a convolution of the input with the output
    cotangent, summed over the examples. Keeping each group apart is a convolution whose
    feature groups are the batch groups (times the layer's own feature groups): input
    channels ``(G, F, m)`` (``m`` examples per group, contracted with the cotangent's
    ``m`` input channels per group), window strides the layer's kernel dilation,
    kernel dilation its strides. The work is that of the batch's kernel gradient, which
    is then the sum over the groups (autodiff's is not computed).

    ``x``: the layer input (B, *spatial, Cin), ``c``: the output cotangent (float32).
    Returns ``(G, *kernel_size, Cin/F, Cout)`` in float32.
    """
    module, path = layer.module, _path_str(layer.path)
    nd = len(module.kernel_size)
    if nd > 3:
        raise ValueError(f"value_grad_and_norms: Conv at {path} has {nd} spatial dimensions "
                         "(at most 3 supported)")
    f, _, p = _conv_geometry(layer)
    b, cin = x.shape[0], x.shape[-1] // f
    m = b // groups
    kernel = tuple(module.kernel_size)
    strides = _as_tuple(module.strides, nd)
    dil = _as_tuple(module.kernel_dilation, nd)
    out_sp = c.shape[1:-1]
    # Pad (or crop, where the padding reaches beyond the last window) to exactly the span
    # the windows read, so that the gradient convolution's output is the kernel's size.
    pads = _conv_pads(module, x.shape[1:-1], path)
    span = [(k - 1) * r + (n - 1) * s + 1
            for k, r, n, s in zip(kernel, dil, out_sp, strides, strict=True)]
    cfg = [(0, 0, 0)] + [(lo, s - n - lo, 0) for (lo, _), s, n in
                         zip(pads, span, x.shape[1:-1], strict=True)] + [(0, 0, 0)]
    xp = jax.lax.pad(x.astype(jnp.float32), jnp.float32(0), cfg)
    sp = tuple(range(2, 2 + nd))
    # lhs: (Cin/F, *span, G*F*m), channel (g, f, j); rhs: (*out, m, G*F*p), channel (g, f, o)
    lhs = xp.reshape(groups, m, *span, f, cin).transpose(3 + nd, *sp, 0, 2 + nd, 1)
    lhs = lhs.reshape(cin, *span, groups * f * m)
    rhs = c.reshape(groups, m, *out_sp, f, p).transpose(*sp, 1, 0, 2 + nd, 3 + nd)
    rhs = rhs.reshape(*out_sp, m, groups * f * p)
    spec = "N" + "HWD"[:nd] + "C"
    out = jax.lax.conv_general_dilated(
        lhs, rhs, window_strides=dil, padding="VALID", rhs_dilation=strides,
        dimension_numbers=(spec, "HWD"[:nd] + "IO", spec),
        feature_group_count=groups * f, precision=module.precision)
    # (Cin/F, *kernel, G*F*p) -> (G, *kernel, Cin/F, F*p)
    out = out.reshape(cin, *kernel, groups, f * p)
    return out.transpose(1 + nd, *range(1, 1 + nd), 0, 2 + nd)


def _use_grouped(layer: _Layer, groups: int) -> bool:
    """Whether a "direct" conv layer forms its per-group kernel gradients as one grouped
    convolution rather than offset by offset (see ``_CONV_DIRECT``)."""
    del layer, groups  # one choice for every layer (measured: BENCHMARKS.md, issue 27)
    if _CONV_DIRECT not in ("offsets", "grouped"):
        raise ValueError(f"_CONV_DIRECT={_CONV_DIRECT!r}: expected 'offsets' or 'grouped'")
    return _CONV_DIRECT == "grouped"


def _conv_kernel_sq_norms(
    layer: _Layer, x: jax.Array, c: jax.Array, groups: int
) -> tuple[jax.Array, jax.Array | None]:
    """Per-group squared norms of a (grouped) conv kernel gradient, offset by offset.

    ``x``: the layer input (B, *spatial, Cin), ``c``: the output cotangent (float32).
    Returns ``(G,)`` and, for plan "direct", the kernel gradient (kh, ..., Cin/F, Cout).
    """
    if layer.plan == "direct" and _use_grouped(layer, groups):
        grads = _conv_group_grads(layer, x, c, groups)
        return jnp.sum(grads * grads, axis=tuple(range(1, grads.ndim))), jnp.sum(grads, axis=0)
    module, path = layer.module, _path_str(layer.path)
    f, _, p = _conv_geometry(layer)
    cin = x.shape[-1] // f
    # (G, T, F, p): T runs over the group's examples and output positions.
    cg = c.reshape(groups, -1, f, p)
    sq = jnp.zeros((groups,), jnp.float32)
    kernel_rows, gram_a = [], None
    for piece in _conv_offsets(module, x, c.shape[1:-1], path):
        a = piece.astype(jnp.float32).reshape(groups, -1, f, cin)
        if layer.plan == "direct":
            grads = jnp.einsum("gtfc,gtfo->gfco", a, cg)
            sq = sq + jnp.sum(grads * grads, axis=(1, 2, 3))
            # (F, cin, p) -> (cin, F * p): the kernel's (Cin/F, Cout) slice at this offset.
            kernel_rows.append(jnp.sum(grads, axis=0).transpose(1, 0, 2).reshape(cin, f * p))
        elif layer.plan == "ghost":
            g = jnp.einsum("gtfc,gsfc->gfts", a, a)
            gram_a = g if gram_a is None else gram_a + g
        else:  # "closed": one position per group
            sq_a = jnp.sum(a[:, 0] ** 2, axis=-1)  # (G, F)
            gram_a = sq_a if gram_a is None else gram_a + sq_a
    if layer.plan == "direct":
        return sq, jnp.stack(kernel_rows)
    if layer.plan == "ghost":
        gram_c = jnp.einsum("gtfo,gsfo->gfts", cg, cg)
        return jnp.sum(gram_a * gram_c, axis=(1, 2, 3)), None
    return jnp.sum(gram_a * jnp.sum(cg[:, 0] ** 2, axis=-1), axis=-1), None


def _group_sq_norm(per_example: jax.Array, groups: int) -> jax.Array:
    """(B, k) per-example gradients -> (G,) squared norms of their group sums."""
    g = per_example.reshape(groups, -1, per_example.shape[-1]).sum(1)
    return jnp.sum(g * g, axis=-1)


def _dense_like_sq_norms(
    layer: _Layer, x: jax.Array, ct: jax.Array, groups: int
) -> tuple[dict[str, jax.Array], jax.Array | None]:
    """Dense / Conv: squared norms of kernel and bias, and the "direct" kernel gradient."""
    c = ct.astype(jnp.float32)
    if layer.kind == "dense":
        a = x.astype(jnp.float32).reshape(groups, -1, x.shape[-1])
        kernel_sq, kernel_grad = _outer_sq_norms(a, c.reshape(groups, -1, c.shape[-1]), layer.plan)
    else:
        kernel_sq, kernel_grad = _conv_kernel_sq_norms(layer, x, c, groups)
    out = {"kernel": kernel_sq}
    if layer.module.use_bias:
        out["bias"] = _group_sq_norm(c.reshape(c.shape[0], -1, c.shape[-1]).sum(1), groups)
    return out, kernel_grad


def _embed_sq_norms(ids: jax.Array, ct: jax.Array, groups: int) -> dict[str, jax.Array]:
    """``||sum_t onehot(id_t) d_t^T||^2 = sum_{t,s} [id_t = id_s] (d_t . d_s)`` per group."""
    i = ids.reshape(groups, -1)
    c = ct.astype(jnp.float32).reshape(groups, i.shape[1], -1)
    same = (i[:, :, None] == i[:, None, :]).astype(jnp.float32)
    return {"embedding": jnp.einsum("gts,gtd,gsd->g", same, c, c)}


def _norm_feature_axes(module: nn.Module, ndim: int) -> tuple[int, ...]:
    if isinstance(module, nn.BatchNorm):
        axes = module.axis
    elif isinstance(module, nn.LayerNorm):
        axes = module.feature_axes
    else:
        axes = -1
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(sorted(ax % ndim for ax in axes))


def _norm_sq_norms(
    module: nn.Module, x_hat: jax.Array, ct: jax.Array, groups: int
) -> dict[str, jax.Array]:
    a = x_hat.astype(jnp.float32)
    c = ct.astype(jnp.float32)
    feature_axes = _norm_feature_axes(module, c.ndim)
    sum_axes = tuple(i for i in range(1, c.ndim) if i not in feature_axes)
    b = c.shape[0]
    out: dict[str, jax.Array] = {}
    if getattr(module, "use_scale", False):
        out["scale"] = _group_sq_norm(jnp.sum(a * c, axis=sum_axes).reshape(b, -1), groups)
    if getattr(module, "use_bias", False):
        out["bias"] = _group_sq_norm(jnp.sum(c, axis=sum_axes).reshape(b, -1), groups)
    return out


# ---------------------------------------------------------------------------------------
# The tap: one custom_vjp per intercepted layer call.


def _apply_fn(module: nn.Module, rest: tuple, kwargs: dict) -> Callable[..., jax.Array]:
    """``forward(layer_params, x, other_collections)``: the layer applied functionally."""

    def forward(layer_params, x, others):
        variables = {"params": layer_params, **others}
        # A tap's own layer call is never intercepted, even when JAX traces it late (the
        # forward of a custom_vjp inside ``jax.checkpoint`` is traced when differentiated).
        _IN_TAP[0] += 1
        try:
            if others:
                out, _ = module.apply(variables, x, *rest, mutable=list(others), **kwargs)
                return out
            return module.apply(variables, x, *rest, **kwargs)
        finally:
            _IN_TAP[0] -= 1

    return forward


def _after(x: jax.Array, ct: jax.Array) -> jax.Array:
    """``x``, made to depend on ``ct`` so that XLA cannot compute from it before ``ct`` exists.

    Without this data dependency XLA's scheduler hoists work on the residual ``x`` (the
    unfolded patches, the recomputed normalisation) into the forward pass, where it stays
    alive until the backward pass: the memory this module is written to avoid.
    (``lax.optimization_barrier`` does not survive XLA:CPU's pipeline; ``0 * c`` is not
    simplified away for floats, and the add fuses into the consumers of ``x``.)
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    if not set(_varying_axes(ct)) <= set(_varying_axes(x)):
        return x  # inside shard_map, x replicated: keep its type (rare; no dependency)
    zero = (ct.reshape(-1)[:1] * 0).astype(x.dtype).reshape(())
    return x + zero


def _with_direct_term(
    sq: jax.Array,
    forward: Callable[..., jax.Array],
    layer_params: dict[str, jax.Array],
    x: jax.Array,
    others: dict,
    name: str,
    direct: dict[str, jax.Array],
    ct: jax.Array,
    groups: int,
) -> jax.Array:
    """``|s_g + q / G|^2`` from ``sq = |s_g|^2``: a parameter-only term's gradient ``q``.

    ``s_g`` is group ``g``'s share of the layer gradient (cotangent scaling) and ``q`` the
    gradient of the loss's terms that read the parameter outside any layer, which every
    example (group) shares equally. ``s_g . q`` is the layer's output tangent in the
    direction ``q`` dotted with the output cotangent, summed over the group.
    """
    q = direct.get(name)
    if q is None:
        return sq
    tangent = {k: (q if k == name else jnp.zeros_like(v)).astype(v.dtype)
               for k, v in layer_params.items()}
    _, t = jax.jvp(lambda pp: forward(pp, x, others), (layer_params,), (tangent,))
    prod = t.astype(jnp.float32) * ct.astype(jnp.float32)
    inner = jnp.sum(prod.reshape(groups, -1), axis=1)
    q32 = q.astype(jnp.float32)
    out = sq + 2.0 * inner / groups + jnp.sum(q32 * q32) / groups**2
    return jnp.maximum(out, 0.0)  # rounding when s_g = -q / G


def _make_tap(layer: _Layer, groups: int, rest: tuple, kwargs: dict) -> Callable[..., Any]:
    """``tap(layer_params, x, others, probes, direct) -> layer output``, with the norms as
    the cotangent of ``probes`` (a dict ``{param name: (G,) zeros}``); ``direct`` holds the
    gradients of parameter-only loss terms (see :func:`_with_direct_term`)."""
    module = layer.module
    forward = _apply_fn(module, rest, kwargs)
    differentiable_x = layer.kind != "embed"

    @jax.custom_vjp
    def tap(layer_params, x, others, probes, direct):
        del probes, direct
        return forward(layer_params, x, others)

    def tap_fwd(layer_params, x, others, probes, direct):
        del probes
        return forward(layer_params, x, others), (layer_params, x, others, direct)

    def tap_bwd(res, ct):
        layer_params, x, others, direct = res
        x = _after(x, ct)
        if differentiable_x:
            _, vjp = jax.vjp(lambda p, xx: forward(p, xx, others), layer_params, x)
            d_params, d_x = vjp(ct)
        else:
            _, vjp = jax.vjp(lambda p: forward(p, x, others), layer_params)
            (d_params,), d_x = vjp(ct), None
        if layer.kind == "norm":
            plain = module.clone(parent=None, use_scale=False, use_bias=False)
            x_hat = _apply_fn(plain, rest, kwargs)({}, x, others)
            sq = _norm_sq_norms(module, x_hat, ct, groups)
        elif layer.kind == "embed":
            sq = _embed_sq_norms(x, ct, groups)
        else:
            sq, kernel_grad = _dense_like_sq_norms(layer, x, ct, groups)
            if _FUSE_DIRECT and kernel_grad is not None:
                # Replaces autodiff's kernel gradient, which XLA then never computes.
                d_params = dict(d_params)
                d_params["kernel"] = _summed_like(kernel_grad, layer_params["kernel"])
        sq = {
            name: _with_direct_term(v, forward, layer_params, x, others, name, direct, ct, groups)
            for name, v in sq.items()
        }
        return d_params, d_x, None, sq, None

    tap.defvjp(tap_fwd, tap_bwd)
    return tap


def _tapped_call(
    layer: _Layer,
    groups: int,
    module: nn.Module,
    args: tuple,
    kwargs: dict,
    next_fun: Any,
    probes: dict[str, jax.Array],
    direct: dict[str, jax.Array] | None = None,
    replace_params: dict[str, jax.Array] | None = None,
) -> jax.Array:
    """Runs one intercepted layer call through its tap (with ``replace_params`` instead of
    the module's own parameters when given)."""
    variables = module.variables
    layer_params = dict(variables.get("params", {}))
    if not layer_params:  # e.g. a normalisation layer without scale and bias
        return next_fun(*args, **kwargs)
    if replace_params is not None:
        layer_params = dict(replace_params)
    for value in (*args[1:], *kwargs.values()):
        if isinstance(value, jax.Array):
            raise ValueError(
                f"value_grad_and_norms: {type(module).__name__} at {_path_str(layer.path)} "
                "is called with an array argument besides its input (e.g. a mask): unsupported"
            )
    others = {k: v for k, v in variables.items() if k != "params"}
    if others:
        # Run the module itself for its side effects (BatchNorm statistics updates); its
        # output is unused, so XLA keeps only the statistics.
        next_fun(*args, **kwargs)
    tap = _make_tap(layer, groups, args[1:], kwargs)
    return tap(layer_params, args[0], others, probes, direct or {})


# ---------------------------------------------------------------------------------------
# Param tree helpers.


def _subtree(tree: PyTree, path: Sequence[str]) -> PyTree | None:
    node = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _params_prefix(params: PyTree, layers: Sequence[_Layer]) -> tuple[str, ...]:
    """``()`` when params is the "params" collection itself, ``("params",)`` for variables."""
    if not layers:
        return ()
    if _subtree(params, layers[0].path) is None and isinstance(params, Mapping):
        if "params" in params and _subtree(params["params"], layers[0].path) is not None:
            return ("params",)
    return ()


def _path_of_keypath(keypath) -> tuple[str, ...]:
    out = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(str(k.idx))
        else:
            out.append(str(k))
    return tuple(out)


def _param_names(layer: _Layer) -> tuple[str, ...]:
    """Names of the parameters of one layer, as its tap reports their norms."""
    module = layer.module
    if layer.kind == "embed":
        return ("embedding",)
    if layer.kind == "norm":
        return tuple(n for n, on in (("scale", module.use_scale), ("bias", module.use_bias)) if on)
    return ("kernel", "bias") if module.use_bias else ("kernel",)


# ---------------------------------------------------------------------------------------
# Parameters read outside the layer calls (e.g. an L2 penalty in the loss).

# Primitives that call a jaxpr with the same inputs and outputs: their dependencies are
# followed inside. Any other primitive with a sub-jaxpr (scan, while, cond) makes each of
# its outputs depend on all of its inputs, which can only over-report dependencies.
_CALL_PRIMITIVES = frozenset({
    "jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "custom_jvp_call",
    "custom_vjp_call", "custom_vjp_call_jaxpr",
})


def _inner_jaxpr(eqn: jax.extend.core.JaxprEqn) -> jax.extend.core.Jaxpr | None:
    if eqn.primitive.name not in _CALL_PRIMITIVES:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        if isinstance(inner, jax.extend.core.ClosedJaxpr):
            inner = inner.jaxpr
        if (isinstance(inner, jax.extend.core.Jaxpr) and len(inner.invars) == len(eqn.invars)
                and len(inner.outvars) == len(eqn.outvars)):
            return inner
    return None


def _dependencies(jaxpr: jax.extend.core.Jaxpr, in_deps: Sequence[int]) -> list[int]:
    """For each output of ``jaxpr``, the bit set of the inputs it depends on."""
    env: dict[Any, int] = dict(zip(jaxpr.invars, in_deps, strict=True))

    def read(v: Any) -> int:
        return 0 if isinstance(v, jax.extend.core.Literal) else env.get(v, 0)

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        inner = _inner_jaxpr(eqn)
        if inner is not None:
            outs = _dependencies(inner, ins)
        else:
            everything = 0
            for d in ins:
                everything |= d
            outs = [everything] * len(eqn.outvars)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _loss_with_layer_params(
    loss_fn: Callable[..., Any], layers: Sequence[_Layer], groups: int, has_aux: bool
) -> Callable[..., jax.Array]:
    """``f(params, layer_params, (args, kwargs))``: the loss, with every recognised layer
    computing with ``layer_params[i]`` instead of its own parameters, so that ``params``
    reaches the loss only through the reads outside the layer calls."""
    by_path = {layer.path: i for i, layer in enumerate(layers)}

    def f(p, layer_params, batch):
        def record(module, a, kw, next_fun):
            i = by_path[tuple(module.path)]
            probes = {n: jnp.zeros((groups,), jnp.float32) for n in _param_names(layers[i])}
            return _tapped_call(layers[i], groups, module, a, kw, next_fun, probes,
                                replace_params=layer_params[i])

        with nn.intercept_methods(_make_interceptor(record)):
            res = loss_fn(p, *batch[0], **batch[1])
        return res[0] if has_aux else res

    return f


def _direct_reads(
    loss_fn: Callable[..., Any], params: PyTree, layers: Sequence[_Layer], groups: int,
    has_aux: bool, args: tuple, kwargs: dict,
) -> tuple[list[bool], Callable[[], PyTree]]:
    """Which leaves of ``params`` the loss reads outside the layer calls, and a function
    computing the gradient of those reads.

    Traces (abstractly) the gradient of the loss with the layers fed separate parameters.
    A leaf is read outside the layers when the loss depends on it there; the gradient of
    those reads must then depend on ``params`` alone (a parameter-only term such as an L2
    penalty, which every example shares), else the leaf is named in a ``ValueError``.
    """
    f = _loss_with_layer_params(loss_fn, layers, groups, has_aux)
    shapes = [dict(layer.param_shapes) for layer in layers]
    closed = jax.make_jaxpr(jax.value_and_grad(f))(params, shapes, (args, kwargs))
    n_p = len(jax.tree.leaves(params))
    n_in = len(closed.jaxpr.invars)
    out = _dependencies(closed.jaxpr, [1 << k for k in range(n_in)])
    loss_deps, grad_deps = out[0], out[1:]
    reads = [bool(loss_deps >> j & 1) for j in range(n_p)]
    others = ~((1 << n_p) - 1)
    paths = [_path_str(_path_of_keypath(k))
             for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    bad = [paths[j] for j in range(n_p) if reads[j] and grad_deps[j] & others]
    if bad:
        raise ValueError(
            f"value_grad_and_norms: parameter(s) {bad} are read outside their layer call in "
            "a loss term that depends on the batch or the activations (e.g. tied weights), "
            "which per-example norms do not support; only parameter-only terms (such as an "
            "L2 penalty) may read parameters outside the layer calls"
        )

    def direct_grads() -> PyTree:
        zeros = [{k: jnp.zeros(v.shape, v.dtype) for k, v in s.items()} for s in shapes]
        return jax.grad(f)(params, zeros, (args, kwargs))

    return reads, direct_grads


# ---------------------------------------------------------------------------------------
# Public API.


def value_grad_and_norms(
    loss_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    has_aux: bool = False,
    num_groups: int | None = None,
    method: str = "auto",
    loss_reduction: str = "mean",
    **kwargs: Any,
) -> tuple[Any, PyTree, PyTree]:
    """Loss, batch gradient and per-example gradient norms, in one forward and one backward pass.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)`` returning the MEAN over the batch of the
        per-example losses, or their SUM with ``loss_reduction="sum"`` (or ``(loss,
        aux)`` with ``has_aux=True``), plus optionally terms of the parameters alone
        (a weight-decay penalty), which are exact (see Semantics in the module docs).
        It must call a Flax linen model's ``apply`` (``mutable=["batch_stats"]`` is fine);
        the model's parametrised layers must be ``nn.Dense``, ``nn.Conv``, ``nn.Embed``,
        ``nn.BatchNorm``, ``nn.GroupNorm`` or ``nn.LayerNorm``, each called once.
      params: the parameters differentiated (the ``"params"`` collection, or a variables
        dict holding it under ``"params"``).
      *args: further positional arguments of ``loss_fn`` (the batch).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      num_groups: ``None`` for per-example norms (leaves of shape ``(B,)``); ``k`` for the
        norms of the mean-loss gradients of ``k`` contiguous equal groups of the batch
        (leaves of shape ``(k,)``). ``k`` must divide ``B``.
      method: ``"auto"`` chooses per layer between the ghost norm and the per-layer
        per-example gradient by cost; ``"ghost"`` or ``"direct"`` force one of them.
      loss_reduction: how ``loss_fn`` reduces the per-example losses over the batch:
        ``"mean"`` (default) or ``"sum"``. It is not detected: a sum loss passed as
        ``"mean"`` gives norms ``B`` times too large. A parameter-only term counts in
        every example's loss as its share of the reduction (whole for a mean, ``1/B``
        of it for a sum).
      **kwargs: further keyword arguments of ``loss_fn``.

    Returns:
      ``(value, grads, norms)``: ``value`` is ``loss`` or ``(loss, aux)`` as from
      ``jax.value_and_grad``, ``grads`` the batch gradient, ``norms`` a pytree like
      ``params`` whose float32 leaves hold the gradient norms of each example's own loss
      (or of each group's mean loss).

    Raises:
      ValueError: for an unknown ``method`` or ``loss_reduction``, a ``num_groups`` that
        does not divide the batch, complex parameters or layers, parameters that do not
        belong to a recognised layer, and parameters read outside their layer call in a
        term that depends on the batch or activations, or that reach their layer
        transformed while also read outside it (each named in the message).

    Example:
      Train a small MLP with CLARS, whose trust ratio divides by the mean per-example
      gradient norm of each tensor:

      >>> import jax, jax.numpy as jnp, flax.linen as nn, optax
      >>> import lars_jax
      >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 5))
      >>> y = jnp.argmax(x[:, :3], axis=1)
      >>> params = model.init(jax.random.key(1), x)["params"]
      >>> def loss_fn(p, x, y):  # the MEAN of the per-example losses
      ...     logits = model.apply({"params": p}, x)
      ...     return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      >>> tx = lars_jax.clars(learning_rate=1.0, trust_coefficient=0.02, momentum=0.9)
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state, x, y):
      ...     loss, grads, norms = lars_jax.value_grad_and_norms(loss_fn, params, x, y)
      ...     updates, state = tx.update(grads, state, params, per_example_norms=norms)
      ...     return optax.apply_updates(params, updates), state, loss, norms
      >>> params, state, first_loss, norms = step(params, state, x, y)
      >>> norms["layers_0"]["kernel"].shape  # one norm per example
      (64,)
      >>> for _ in range(60):
      ...     params, state, loss, _ = step(params, state, x, y)
      >>> bool(loss < 0.1 * first_loss)
      True

    References:
      Goodfellow, "Efficient per-example gradient computations", arXiv 1510.01799, 2015.
      Bu, Mao, Xu, "Scalable and efficient training of large convolutional neural
      networks with differential privacy", arXiv 2205.10683, 2022.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if loss_reduction not in _REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {_REDUCTIONS}, got {loss_reduction!r}")
    if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 1):
        raise ValueError(f"num_groups must be a positive int or None, got {num_groups!r}")
    _refuse_complex(params)

    layers, batch, groups = _layers_and_groups(loss_fn, params, num_groups, method, args, kwargs)
    prefix = _params_prefix(params, layers)
    by_path = {layer.path: i for i, layer in enumerate(layers)}
    reads, direct_grads = _direct_reads(loss_fn, params, layers, groups, has_aux, args, kwargs)
    direct: list[dict[str, jax.Array]] = [{} for _ in layers]
    if any(reads):
        keys = [_path_of_keypath(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        q_leaves = jax.tree.leaves(direct_grads())
        for key, read, q in zip(keys, reads, q_leaves, strict=True):
            i = by_path.get(key[len(prefix):-1]) if read else None
            if i is not None:
                direct[i][key[-1]] = q

    def probed_loss(p, probes):
        def record(module, a, kw, next_fun):
            i = by_path[tuple(module.path)]
            _check_read_as_is(layers[i], module, p, prefix, direct[i])
            return _tapped_call(layers[i], groups, module, a, kw, next_fun, probes[i],
                                direct=direct[i])

        with nn.intercept_methods(_make_interceptor(record)):
            res = loss_fn(p, *args, **kwargs)
        return res if has_aux else (res, None)

    axes = _varying_axes((params, args, kwargs))
    probes = [{name: _zero_probe(groups, axes) for name in _param_names(lr)} for lr in layers]
    (loss, aux), (grads, sq_tree) = jax.value_and_grad(probed_loss, argnums=(0, 1), has_aux=True)(
        params, probes
    )
    # The cotangents are those of the reduced loss: scale the group sums back to the
    # gradients of each group's mean loss.
    scale = groups if loss_reduction == "mean" else groups / batch
    norms = _norms_like(params, layers, sq_tree, prefix, scale)
    value = (loss, aux) if has_aux else loss
    return value, grads, norms


def _refuse_complex(params: PyTree) -> None:
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.iscomplexobj(leaf):
            raise ValueError(
                f"value_grad_and_norms: parameter {_path_str(_path_of_keypath(keypath))} is "
                "complex; per-example norms support real parameters only (split it into "
                "real and imaginary parts, or use LARS, whose norms take |x|^2)"
            )


def _layers_and_groups(
    loss_fn: Callable[..., Any], params: PyTree, num_groups: int | None, method: str,
    args: tuple, kwargs: dict,
) -> tuple[list[_Layer], int, int]:
    """Discovers the layer calls, checks them and plans each; returns (layers, B, G)."""
    layers = _discover(loss_fn, params, *args, **kwargs)
    if not layers:
        raise ValueError(f"value_grad_and_norms: loss_fn called no layer of {_SUPPORTED} "
                         f"(for Flax NNX models use lars_jax.nnx_value_grad_and_norms)")
    batch = layers[0].out_shape.shape[0]
    for layer in layers:
        if layer.out_shape.shape[0] != batch:
            raise ValueError(
                f"value_grad_and_norms: layer {_path_str(layer.path)} has leading dimension "
                f"{layer.out_shape.shape[0]}, other layers {batch}: the batch must be axis 0"
            )
        if jnp.issubdtype(layer.out_shape.dtype, jnp.complexfloating):
            raise ValueError(
                f"value_grad_and_norms: layer {_path_str(layer.path)} computes in complex "
                f"{layer.out_shape.dtype}; per-example norms support real layers only"
            )
    groups = batch if num_groups is None else num_groups
    if batch % groups:
        raise ValueError(f"num_groups={num_groups} does not divide the batch size {batch}")
    for layer in layers:
        layer.plan = _plan(layer, groups, method)
        if layer.kind == "conv":  # validate the configuration before the real pass
            _check_conv(layer.module, layer.in_shape, _path_str(layer.path))
    return layers, batch, groups


def _check_read_as_is(
    layer: _Layer, module: nn.Module, p: PyTree, prefix: tuple[str, ...],
    direct: dict[str, jax.Array],
) -> None:
    """A parameter read outside its layer must reach the layer unchanged (the same value)."""
    if not direct:
        return
    own = module.variables.get("params", {})
    given = _subtree(p, prefix + layer.path) or {}
    for name in direct:
        if own.get(name) is not given.get(name):
            raise ValueError(
                f"value_grad_and_norms: parameter {_path_str(prefix + layer.path + (name,))} "
                "is read outside its layer call and reaches the layer transformed (cast, "
                "scaled, or inside a lifted transform such as nn.remat); per-example norms "
                "support a penalty only on parameters passed to the layer unchanged"
            )


def _norms_like(
    params: PyTree, layers: Sequence[_Layer], sq_tree: Sequence[dict[str, jax.Array]],
    prefix: tuple[str, ...], scale: float,
) -> PyTree:
    """The norms, ``scale * sqrt(sq)``, as a tree like ``params`` (every leaf must have one)."""
    sq = {
        prefix + layer.path + (name,): v
        for layer, layer_sq in zip(layers, sq_tree, strict=True)
        for name, v in layer_sq.items()
    }
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    norms_leaves = []
    missing = []
    for keypath, _ in leaves_with_path:
        key = _path_of_keypath(keypath)
        if key in sq:
            norms_leaves.append(scale * jnp.sqrt(sq.pop(key)))
        else:
            missing.append(_path_str(key))
    if missing:
        raise ValueError(
            "value_grad_and_norms: these parameters do not belong to a recognised layer "
            f"({_SUPPORTED}): {missing} (for Flax NNX models use "
            "lars_jax.nnx_value_grad_and_norms)"
        )
    return jax.tree_util.tree_unflatten(treedef, norms_leaves)


def _leaf_norms(tree: PyTree, batch_dims: int = 1) -> PyTree:
    def norm(x):
        x = x.astype(jnp.float32)
        axes = tuple(range(batch_dims, x.ndim))
        return jnp.sqrt(jnp.sum(x * x, axis=axes))

    return jax.tree_util.tree_map(norm, tree)


def per_example_norms_vmap(
    per_example_loss_fn: Callable[..., jax.Array], params: PyTree, *args: Any
) -> PyTree:
    """Reference per-example gradient norms with ``jax.vmap(jax.grad(...))``.

    Materialises ``B`` gradients: for tests and benchmarks, not for training.

    Args:
      per_example_loss_fn: ``per_example_loss_fn(params, *single_example_args)`` -> scalar.
      params: parameters.
      *args: batched arguments, mapped over axis 0.

    Returns:
      A pytree like ``params`` with float32 leaves of shape ``(B,)``.

    References:
      Goodfellow, "Efficient per-example gradient computations", arXiv 1510.01799, 2015.
    """
    grads = jax.vmap(jax.grad(per_example_loss_fn), in_axes=(None,) + (0,) * len(args))(
        params, *args
    )
    return _leaf_norms(grads)


def group_gradient_norms(
    loss_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    num_groups: int,
    has_aux: bool = False,
) -> PyTree:
    """Reference micro-batch norms: gradient norms of ``loss_fn`` on each contiguous group.

    Args:
      loss_fn: ``loss_fn(params, *batch_args)`` -> mean loss (or ``(loss, aux)``).
      params: parameters.
      *args: batched arguments, split along axis 0 into ``num_groups`` equal groups.
      num_groups: number of groups; must divide the batch size.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      A pytree like ``params`` with float32 leaves of shape ``(num_groups,)``.

    References:
      Huo, Gu, Huang, "Large batch training does not need warmup", arXiv 2002.01576, 2020.
    """
    batch = jax.tree_util.tree_leaves(args)[0].shape[0]
    if num_groups < 1 or batch % num_groups:
        raise ValueError(f"num_groups={num_groups} does not divide the batch size {batch}")
    split = jax.tree_util.tree_map(
        lambda x: x.reshape(num_groups, batch // num_groups, *x.shape[1:]), args
    )
    grad_fn = jax.grad(loss_fn, has_aux=has_aux)

    def one(group_args):
        g = grad_fn(params, *group_args)
        return g[0] if has_aux else g

    grads = jax.lax.map(one, split)
    return _leaf_norms(grads)


__all__ = ["group_gradient_norms", "per_example_norms_vmap", "value_grad_and_norms"]
