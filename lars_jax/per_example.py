"""Per-example (and per-micro-batch) gradient norms in one forward and one backward pass.

CLARS divides by the mean over the batch of the per-example gradient norms of every
parameter tensor. The naive way, ``jax.vmap(jax.grad(...))``, materialises ``B`` copies
of the gradient. :func:`value_grad_and_norms` gets the norms from the quantities a normal
backward pass already has:

* Every ``nn.Dense``, ``nn.Conv``, ``nn.BatchNorm``, ``nn.GroupNorm`` and ``nn.LayerNorm``
  call is intercepted with :func:`flax.linen.intercept_methods`. A zero perturbation is
  added to its output, so that the gradient with respect to the perturbation is the
  layer's output cotangent ``d``, and the layer input ``a`` (for norm layers, the
  normalised input ``x_hat``) is captured.
* The weight gradient of example ``i`` is ``G_i = a_i^T d_i`` (``a_i`` unfolded into
  patches for a convolution), summed over positions ``t``. Its squared norm is computed
  without storing ``B`` gradients, choosing per layer by cost (Bu et al. 2022, "mixed
  ghost clipping"): either the *ghost norm*
  ``||G_i||^2 = sum_{t,s} (a_it . a_is)(d_it . d_is)`` from two ``T x T`` Gram matrices
  (used when ``2 T^2 < d p``, ``d`` the unfolded input width, ``p`` the output width),
  or the per-example gradient of that one layer, ``(B, d, p)``, which is reduced to its
  norm at once. For a Dense layer on ``(B, d)`` inputs (``T = 1``) this is Goodfellow's
  ``||a_i||^2 ||d_i||^2``. Biases and the scale and offset of normalisation layers have
  per-example gradients ``sum_t d_it`` and ``sum_t x_hat_it * d_it`` directly.
* Where the per-example kernel gradients are formed, their sum *is* the kernel gradient:
  such layers are called with ``stop_gradient`` on the kernel, so that autodiff does not
  compute the weight gradient a second time, and the sum is added to the gradient.

Cost: about one extra weight-gradient computation for the ghost-norm layers and the
unfolding of conv inputs into patches; the layer inputs and output cotangents of all
layers are alive together at the end of the backward pass (the norms are computed after
it), so peak memory is several times that of a plain gradient step (3.3x for ResNet-20 at
batch 128 on CPU, see BENCHMARKS.md).

Semantics:

* Without normalisation layers, or with GroupNorm / LayerNorm (which act on each example
  separately), the norms equal those of ``jax.vmap(jax.grad(per_example_loss))``:
  :func:`per_example_norms_vmap` is that reference.
* With BatchNorm the examples are coupled and a per-example gradient is not uniquely
  defined. The norms returned are those of each example's *contribution* to the batch
  gradient: ``B * a_i^T d_i``, where the cotangent ``d_i`` already contains BatchNorm's
  cross-example terms. The contributions sum exactly to ``B`` times the batch gradient
  (so their mean is the batch gradient). ``vmap(grad)`` computes something else
  (BatchNorm over a batch of one).
* Norms are those of the gradient of the example's own loss ``l_i`` (not scaled by
  ``1/B``), so ``mean(norms) >= ||g||`` by the triangle inequality.
* With ``num_groups=k`` (micro-batch mode), the batch is cut into ``k`` contiguous equal
  groups and the norms are those of each group's mean-loss gradient: for ``k`` devices in
  data-parallel training these are the norms of the local gradients before the
  all-reduce. With BatchNorm they are the norms of the group sums of the contributions.

Dense and Conv layers are identified by exact type; normalisation layers also by subclass
(such as a ghost BatchNorm), which must compute ``x_hat * scale + bias`` per feature and give
``x_hat`` when cloned with ``use_scale=False, use_bias=False``. Other parametrised modules
(``nn.Embed``, ``nn.DenseGeneral``, custom ``self.param`` calls, a module called twice) are
not recognised, and a ``ValueError`` names their parameters instead of returning wrong norms.

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
# For layers whose per-example kernel gradients are formed ("direct"), take the kernel
# gradient from their sum instead of a second weight-gradient computation by autodiff.
_FUSE_DIRECT = True
_DENSE_TYPES = (nn.Dense,)
_CONV_TYPES = (nn.Conv,)
_NORM_TYPES = (nn.BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclasses.dataclass
class _Layer:
    """What the discovery pass learns about one intercepted layer call."""

    path: tuple[str, ...]
    kind: str  # "dense", "conv" or "norm"
    module: nn.Module
    out_shape: jax.ShapeDtypeStruct
    in_shape: tuple[int, ...]
    plan: str = ""  # "norm", "closed" (T = 1), "ghost" or "direct"


def _layer_kind(module: nn.Module) -> str | None:
    t = type(module)
    if t in _DENSE_TYPES:
        return "dense"
    if t in _CONV_TYPES:
        return "conv"
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
        if (
            busy[0]
            or context.method_name != "__call__"
            or _layer_kind(module) is None
            or module.is_initializing()
        ):
            return next_fun(*args, **kwargs)
        busy[0] = True
        try:
            return record(module, args, kwargs, next_fun)
        finally:
            busy[0] = False

    return interceptor


def _normalized_input(module: nn.Module, args: tuple, kwargs: dict) -> jax.Array:
    """``x_hat`` of a normalisation layer: the same module without scale and bias."""
    plain = module.clone(parent=None, use_scale=False, use_bias=False)
    variables = {k: v for k, v in module.variables.items() if k != "params"}
    if "batch_stats" in variables:
        out, _ = plain.apply(variables, *args, mutable=["batch_stats"], **kwargs)
    else:
        out = plain.apply(variables, *args, **kwargs)
    return out


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


def _zero_perturbation(layer: _Layer, axes: tuple[str, ...]) -> jax.Array:
    """The zero perturbation of a layer output, varying over the given mesh axes.

    Inside ``jax.shard_map`` a plain ``jnp.zeros`` is replicated, and the gradient with
    respect to a replicated value is summed over the devices: the perturbation must vary
    like the batch for its gradient to be this device's cotangent.
    """
    zeros = jnp.zeros(layer.out_shape.shape, layer.out_shape.dtype)
    if axes:
        zeros = jax.lax.pcast(zeros, axes, to="varying")
    return zeros


def _call_with_frozen_kernel(module: nn.Module, args: tuple, kwargs: dict) -> jax.Array:
    """Calls a Dense/Conv module with ``stop_gradient`` on its kernel (bias unchanged)."""
    variables = dict(module.variables)
    layer_params = dict(variables["params"])
    layer_params["kernel"] = jax.lax.stop_gradient(layer_params["kernel"])
    variables["params"] = layer_params
    return module.clone(parent=None).apply(variables, *args, **kwargs)


def _add_grad(g: jax.Array, extra: jax.Array | None) -> jax.Array:
    """``g + extra``, summing ``extra`` over the mesh axes ``g`` does not vary over.

    Inside ``jax.shard_map`` autodiff returns the gradient of a replicated parameter
    summed over the devices; the kernel gradient formed here from this device's
    activations must be summed the same way to match it.
    """
    if extra is None:
        return g
    extra = extra.reshape(g.shape).astype(g.dtype)
    missing = tuple(sorted(set(_varying_axes(extra)) - set(_varying_axes(g))))
    if missing:
        extra = jax.lax.psum(extra, missing)
    return g + extra


# ---------------------------------------------------------------------------------------
# Per-layer squared norms.


def _plan(layer: _Layer, groups: int, method: str) -> str:
    """How one layer's kernel norms are computed (Bu et al.'s rule: ghost if 2T^2 < dp)."""
    if layer.kind == "norm":
        return "norm"
    out = layer.out_shape.shape
    t = math.prod(out[1:-1]) * (out[0] // groups)  # positions per group
    d = layer.in_shape[-1]
    if layer.kind == "conv":
        d *= math.prod(layer.module.kernel_size)
    p = out[-1]
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


def _conv_patches(
    module: nn.Conv,
    x: jax.Array,
    out_spatial: Sequence[int],
    path: str,
    check_only: bool = False,
) -> list[jax.Array]:
    """Unfolded conv inputs: one (B, T, Cin) slice per kernel offset, row-major offsets."""
    nd = len(module.kernel_size)
    if x.ndim != nd + 2:
        raise ValueError(
            f"value_grad_and_norms: Conv at {path} got an input of shape {x.shape}; expected "
            f"exactly one batch dimension and {nd} spatial dimensions"
        )
    if module.feature_group_count != 1:
        raise ValueError(
            f"value_grad_and_norms: Conv at {path} has feature_group_count="
            f"{module.feature_group_count}; only 1 is supported"
        )
    if any(r != 1 for r in _as_tuple(module.input_dilation, nd)) or module.mask is not None:
        raise ValueError(
            f"value_grad_and_norms: Conv at {path} uses input_dilation or a mask (unsupported)"
        )
    pads = _conv_pads(module, x.shape[1:-1], path)
    if check_only:
        return []
    strides = _as_tuple(module.strides, nd)
    dil = _as_tuple(module.kernel_dilation, nd)
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    b, c = x.shape[0], x.shape[-1]
    pieces = []
    for offset in itertools.product(*(range(k) for k in module.kernel_size)):
        start = [o * r for o, r in zip(offset, dil, strict=True)]
        limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, out_spatial, strides, strict=True)]
        piece = jax.lax.slice(xp, (0, *start, 0), (b, *limit, c), (1, *strides, 1))
        pieces.append(piece.reshape(b, -1, c))
    return pieces


def _layer_sq_norms(
    layer: _Layer,
    captured: jax.Array,
    cot: jax.Array,
    groups: int,
) -> tuple[dict[str, jax.Array], jax.Array | None]:
    """Squared norms (G,) of each param of one layer, from its input and output cotangent.

    Also returns the kernel gradient for "direct" layers (None otherwise).
    """
    module, path = layer.module, _path_str(layer.path)
    b = cot.shape[0]
    n = b // groups
    a = captured.astype(jnp.float32)
    c = cot.astype(jnp.float32)
    out: dict[str, jax.Array] = {}
    if layer.kind == "norm":
        feature_axes = _norm_feature_axes(module, c.ndim)
        sum_axes = tuple(i for i in range(1, c.ndim) if i not in feature_axes)
        if getattr(module, "use_scale", False):
            gs = jnp.sum(a * c, axis=sum_axes).reshape(groups, n, -1).sum(1)
            out["scale"] = jnp.sum(gs * gs, axis=-1)
        if getattr(module, "use_bias", False):
            gb = jnp.sum(c, axis=sum_axes).reshape(groups, n, -1).sum(1)
            out["bias"] = jnp.sum(gb * gb, axis=-1)
        return out, None
    p = c.shape[-1]
    cg = c.reshape(groups, -1, p)
    if layer.kind == "dense":
        a = a.reshape(groups, -1, a.shape[-1])
    else:
        pieces = _conv_patches(module, a, c.shape[1:-1], path)
        patches = jnp.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]
        a = patches.reshape(groups, -1, patches.shape[-1])
    out["kernel"], kernel_grad = _outer_sq_norms(a, cg, layer.plan)
    if module.use_bias:
        gb = cg.sum(1)
        out["bias"] = jnp.sum(gb * gb, axis=-1)
    return out, kernel_grad


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


# ---------------------------------------------------------------------------------------
# Public API.


def value_grad_and_norms(
    loss_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    has_aux: bool = False,
    num_groups: int | None = None,
    method: str = "auto",
    **kwargs: Any,
) -> tuple[Any, PyTree, PyTree]:
    """Loss, batch gradient and per-example gradient norms, in one forward and backward pass.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)`` returning the MEAN over the batch of the
        per-example losses (or ``(loss, aux)`` with ``has_aux=True``). It must call a Flax
        linen model's ``apply`` (``mutable=["batch_stats"]`` is fine); the model's
        parametrised layers must be ``nn.Dense``, ``nn.Conv``, ``nn.BatchNorm``,
        ``nn.GroupNorm`` or ``nn.LayerNorm``, each called once.
      params: the parameters differentiated (the ``"params"`` collection, or a variables
        dict holding it under ``"params"``).
      *args: further positional arguments of ``loss_fn`` (the batch).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      num_groups: ``None`` for per-example norms (leaves of shape ``(B,)``); ``k`` for the
        norms of the mean-loss gradients of ``k`` contiguous equal groups of the batch
        (leaves of shape ``(k,)``). ``k`` must divide ``B``.
      method: ``"auto"`` chooses per layer between the ghost norm and the per-layer
        per-example gradient by cost; ``"ghost"`` or ``"direct"`` force one of them.
      **kwargs: further keyword arguments of ``loss_fn``.

    Returns:
      ``(value, grads, norms)``: ``value`` is ``loss`` or ``(loss, aux)`` as from
      ``jax.value_and_grad``, ``grads`` the batch gradient, ``norms`` a pytree like
      ``params`` whose float32 leaves hold the gradient norms of each example's own loss
      (or of each group's mean loss).

    Raises:
      ValueError: for an unknown ``method``, a ``num_groups`` that does not divide the
        batch, or parameters that do not belong to a recognised layer (named in the
        message).

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
    if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 1):
        raise ValueError(f"num_groups must be a positive int or None, got {num_groups!r}")

    layers = _discover(loss_fn, params, *args, **kwargs)
    if not layers:
        raise ValueError(
            "value_grad_and_norms: loss_fn called no nn.Dense / nn.Conv / normalisation layer"
        )
    batch = layers[0].out_shape.shape[0]
    for layer in layers:
        if layer.out_shape.shape[0] != batch:
            raise ValueError(
                f"value_grad_and_norms: layer {_path_str(layer.path)} has leading dimension "
                f"{layer.out_shape.shape[0]}, other layers {batch}: the batch must be axis 0"
            )
    groups = batch if num_groups is None else num_groups
    if batch % groups:
        raise ValueError(f"num_groups={num_groups} does not divide the batch size {batch}")

    for layer in layers:
        layer.plan = _plan(layer, groups, method)
        if layer.kind == "conv":  # validate the configuration before the real pass
            _conv_patches(
                layer.module,
                jax.ShapeDtypeStruct(layer.in_shape, jnp.float32),
                layer.out_shape.shape[1:-1],
                _path_str(layer.path),
                check_only=True,
            )
    prefix = _params_prefix(params, layers)
    by_path = {layer.path: i for i, layer in enumerate(layers)}

    def perturbed_loss(p, perts):
        captured: list[Any] = [None] * len(layers)

        def record(module, a, kw, next_fun):
            i = by_path[tuple(module.path)]
            if _FUSE_DIRECT and layers[i].plan == "direct":
                # The per-example kernel gradients are computed anyway: their sum is the
                # kernel gradient, so autodiff need not compute it through this call.
                out = _call_with_frozen_kernel(module, a, kw)
            else:
                out = next_fun(*a, **kw)
            if layers[i].kind == "norm":
                captured[i] = _normalized_input(module, a, kw)
            else:
                captured[i] = a[0]
            return out + perts[i].astype(out.dtype)

        with nn.intercept_methods(_make_interceptor(record)):
            res = loss_fn(p, *args, **kwargs)
        if has_aux:
            loss, aux = res
        else:
            loss, aux = res, None
        return loss, (aux, captured)

    axes = _varying_axes((params, args, kwargs))
    perts = [_zero_perturbation(layer, axes) for layer in layers]
    (loss, (aux, captured)), (grads, cots) = jax.value_and_grad(
        perturbed_loss, argnums=(0, 1), has_aux=True
    )(params, perts)

    sq: dict[tuple[str, ...], jax.Array] = {}
    extra_grads: dict[tuple[str, ...], jax.Array] = {}
    for layer, acts, cot in zip(layers, captured, cots, strict=True):
        layer_sq, kernel_grad = _layer_sq_norms(layer, acts, cot, groups)
        for name, v in layer_sq.items():
            sq[prefix + layer.path + (name,)] = v
        if _FUSE_DIRECT and kernel_grad is not None:
            extra_grads[prefix + layer.path + ("kernel",)] = kernel_grad
    if extra_grads:
        grads = jax.tree_util.tree_map_with_path(
            lambda kp, g: _add_grad(g, extra_grads.get(_path_of_keypath(kp))), grads
        )

    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    norms_leaves = []
    missing = []
    for keypath, _ in leaves_with_path:
        key = _path_of_keypath(keypath)
        if key in sq:
            # The cotangents are those of the mean loss: scale the group sums back.
            norms_leaves.append(groups * jnp.sqrt(sq.pop(key)))
        else:
            missing.append(_path_str(key))
    if missing:
        raise ValueError(
            "value_grad_and_norms: these parameters do not belong to a recognised layer "
            f"(nn.Dense, nn.Conv, nn.BatchNorm, nn.GroupNorm, nn.LayerNorm): {missing}"
        )
    norms = jax.tree_util.tree_unflatten(treedef, norms_leaves)
    value = (loss, aux) if has_aux else loss
    return value, grads, norms


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
