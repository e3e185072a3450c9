"""Per-example gradient norms of Flax NNX models, for CLARS with ``nnx.Optimizer``.

:func:`nnx_value_grad_and_norms` is :func:`lars_jax.value_grad_and_norms` for an NNX
model: one forward and one backward pass give the loss, the gradient (an ``nnx.State``
like ``nnx.grad``'s) and, for every parameter, the gradient norms of each example's own
loss (leaves of shape ``(B,)``, the same ``nnx.State`` structure)::

    loss, grads, norms = lars_jax.nnx_value_grad_and_norms(loss_fn, model, x, y)
    optimizer.update(model, grads, per_example_norms=norms)   # tx=lars_jax.clars(...)

How: each recognised NNX layer call is carried out by the equivalent linen layer (same
parameters, same arithmetic) inside one host linen module, so that the linen machinery
of :mod:`lars_jax.per_example` (ghost norms, per-layer per-example gradients) applies
unchanged:

==================  ==================================================================
NNX layer           carried out by
==================  ==================================================================
``nnx.Linear``      ``nn.Dense``
``nnx.Conv``        ``nn.Conv``
``nnx.BatchNorm``   ``nn.BatchNorm`` (running statistics are written back to the model)
``nnx.LayerNorm``   ``nn.LayerNorm``
``nnx.GroupNorm``   ``nn.GroupNorm``
``nnx.Embed``       ``nn.Dense`` without bias on ``one_hot(ids)`` (exact: one non-zero
                    term per output; memory ``B x T x num_embeddings``, so meant for
                    small vocabularies)
==================  ==================================================================

The semantics are those of :func:`lars_jax.value_grad_and_norms` (BatchNorm: each
example's contribution to the batch gradient; ``num_groups`` for micro-batch norms).
Other state (BatchNorm statistics, RNG counters of ``nnx.Dropout``) is updated in
``model`` as ``nnx.grad`` would. Layers are matched by exact type and must use their
default ``dot_general`` / ``conv_general_dilated`` / ``promote_dtype``; every
``nnx.Param`` must belong to such a layer, called once per forward pass.

Reading parameters in the loss outside the layer calls (``nnx.state(model, nnx.Param)``,
``model.layer.kernel[...]``) gives their values, and a term of the parameters alone (an
L2 penalty) is exact in the norms, as in :func:`lars_jax.value_grad_and_norms`; a read
whose gradient depends on the batch or activations (tied weights) raises ``ValueError``
naming the parameter. NNX objects among the loss's arguments (``nnx.Rngs``, passed
positionally or by keyword) are handled as ``nnx.value_and_grad`` does: the loss sees a
copy, and the original's state (RNG counters) is updated after the pass.

References:
  Goodfellow, "Efficient per-example gradient computations", arXiv 1510.01799, 2015.
  Bu, Mao, Xu, "Scalable and efficient training of large convolutional neural networks
  with differential privacy" (mixed ghost clipping), arXiv 2205.10683, 2022.
  Huo, Gu, Huang, "Large batch training does not need warmup", arXiv 2002.01576, 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as _nnx_dtypes

from lars_jax.per_example import value_grad_and_norms

__all__ = ["nnx_value_grad_and_norms"]

# nnx attribute -> linen attribute, per supported layer type.
_PARAM_NAMES: dict[type, dict[str, str]] = {
    nnx.Linear: {"kernel": "kernel", "bias": "bias"},
    nnx.Conv: {"kernel": "kernel", "bias": "bias"},
    nnx.Embed: {"embedding": "kernel"},
    nnx.BatchNorm: {"scale": "scale", "bias": "bias"},
    nnx.LayerNorm: {"scale": "scale", "bias": "bias"},
    nnx.GroupNorm: {"scale": "scale", "bias": "bias"},
}
# Attributes that must keep their default for the linen twin to compute the same thing.
_DEFAULT_FNS = {
    "dot_general": jax.lax.dot_general,
    "conv_general_dilated": jax.lax.conv_general_dilated,
    "promote_dtype": _nnx_dtypes.promote_dtype,
    "preferred_element_type": None,
}


def _path_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(k) for k in path) if path else "<root>"


def _linen_twin(layer: nnx.Module, name: str) -> nn.Module:
    """The linen module that computes what ``layer.__call__`` computes."""
    t = type(layer)
    for attr, default in _DEFAULT_FNS.items():
        if hasattr(layer, attr) and getattr(layer, attr) is not default:
            raise ValueError(
                f"nnx_value_grad_and_norms: layer {name} ({t.__name__}) has a custom "
                f"`{attr}`; only the default is supported."
            )
    if t is nnx.Linear:
        return nn.Dense(layer.out_features, use_bias=layer.use_bias, dtype=layer.dtype,
                        param_dtype=layer.param_dtype, precision=layer.precision, name=name)
    if t is nnx.Conv:
        return nn.Conv(
            layer.out_features, kernel_size=layer.kernel_size, strides=layer.strides,
            padding=layer.padding, input_dilation=layer.input_dilation,
            kernel_dilation=layer.kernel_dilation,
            feature_group_count=layer.feature_group_count, use_bias=layer.use_bias,
            mask=layer.mask, dtype=layer.dtype, param_dtype=layer.param_dtype,
            precision=layer.precision, name=name,
        )
    if t is nnx.Embed:
        return nn.Dense(layer.features, use_bias=False, dtype=layer.dtype,
                        param_dtype=layer.param_dtype, precision=jax.lax.Precision.HIGHEST,
                        name=name)
    common = dict(epsilon=layer.epsilon, dtype=layer.dtype, param_dtype=layer.param_dtype,
                  use_bias=layer.use_bias, use_scale=layer.use_scale,
                  axis_name=layer.axis_name, axis_index_groups=layer.axis_index_groups,
                  use_fast_variance=layer.use_fast_variance, name=name)
    if t is nnx.BatchNorm:
        # use_running_average is resolved at each call (the model's train/eval mode).
        return nn.BatchNorm(axis=layer.axis, momentum=layer.momentum, **common)
    if t is nnx.LayerNorm:
        return nn.LayerNorm(reduction_axes=layer.reduction_axes,
                            feature_axes=layer.feature_axes, **common)
    if t is nnx.GroupNorm:
        return nn.GroupNorm(num_groups=layer.num_groups, reduction_axes=layer.reduction_axes,
                            **common)
    raise AssertionError(t)  # pragma: no cover - _PARAM_NAMES lists the types


_MIN_FLAX = (0, 12)


def _check_flax_version() -> None:
    """The NNX API used here (``nnx.iter_modules``, ``merge(copy=True)``) is flax >= 0.12."""
    import flax  # noqa: PLC0415

    version = tuple(int(p) for p in flax.__version__.split(".")[:2] if p.isdigit())
    if version < _MIN_FLAX:
        raise ImportError(
            f"nnx_value_grad_and_norms needs flax >= {'.'.join(map(str, _MIN_FLAX))}, "
            f"found {flax.__version__}."
        )


def _recognised_layers(model: nnx.Module) -> dict[tuple[Any, ...], nnx.Module]:
    return {
        tuple(path): m for path, m in nnx.iter_modules(model) if type(m) in _PARAM_NAMES
    }


def _param_paths(params: nnx.State) -> list[tuple[Any, ...]]:
    """The nnx path of every leaf of ``params``, in ``jax.tree.flatten`` order."""
    paths = []
    for keypath, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = []
        for k in keypath:
            if isinstance(k, jax.tree_util.DictKey):
                keys.append(k.key)
            elif isinstance(k, jax.tree_util.SequenceKey):
                keys.append(k.idx)
            elif isinstance(k, jax.tree_util.GetAttrKey) and k.name != "value":
                keys.append(k.name)
        paths.append(tuple(keys))
    return paths


def nnx_value_grad_and_norms(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    *args: Any,
    has_aux: bool = False,
    num_groups: int | None = None,
    method: str = "auto",
    loss_reduction: str = "mean",
    **kwargs: Any,
) -> tuple[Any, nnx.State, nnx.State]:
    """Loss, gradient and per-example gradient norms of an NNX model in one backward pass.

    Args:
      loss_fn: ``loss_fn(model, *args, **kwargs)`` returning the MEAN over the batch of
        the per-example losses (or ``(loss, aux)`` with ``has_aux=True``), as for
        ``nnx.value_and_grad``.
      model: an ``nnx.Module`` whose ``nnx.Param`` all belong to ``nnx.Linear``,
        ``nnx.Conv``, ``nnx.Embed``, ``nnx.BatchNorm``, ``nnx.LayerNorm`` or
        ``nnx.GroupNorm`` layers, each called once per forward pass.
      *args: further positional arguments of ``loss_fn`` (the batch, on axis 0).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      num_groups: ``None`` for per-example norms, ``k`` for the norms of ``k``
        contiguous equal micro-batches (as in :func:`lars_jax.value_grad_and_norms`).
      method: ``"auto"``, ``"ghost"`` or ``"direct"`` (as there).
      loss_reduction: ``"mean"`` (default) or ``"sum"``: how ``loss_fn`` reduces the
        per-example losses (as there; not detected).
      **kwargs: further keyword arguments of ``loss_fn``.

    Returns:
      ``(value, grads, norms)``: ``value`` is ``loss`` or ``(loss, aux)``; ``grads`` the
      gradient, an ``nnx.State`` of the model's ``nnx.Param`` (as ``nnx.grad`` returns);
      ``norms`` the same structure with float32 leaves of shape ``(B,)`` (or
      ``(num_groups,)``). Non-parameter state of ``model`` (BatchNorm statistics, RNG
      counters) is updated in place.

    Raises:
      ValueError: for parameters outside the supported layers, layers with custom
        ``dot_general``/``promote_dtype``, a parameter read outside its layer's
        ``__call__`` in a term that depends on the batch (tied weights,
        ``Embed.attend``), a layer called twice, or the errors of
        :func:`lars_jax.value_grad_and_norms`.

    Examples:
      CLARS on an NNX MLP with ``nnx.Optimizer``:

      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import lars_jax
      >>> class MLP(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.hidden = nnx.Linear(5, 16, rngs=rngs)
      ...         self.out = nnx.Linear(16, 3, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.out(nnx.relu(self.hidden(x)))
      >>> model = MLP(nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (64, 5))
      >>> y = jnp.argmax(x[:, :3], axis=1)
      >>> def loss_fn(model, x, y):
      ...     logits = model(x)
      ...     return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      >>> tx = lars_jax.clars(learning_rate=1.0, trust_coefficient=0.02)
      >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
      >>> @nnx.jit
      ... def step(model, optimizer, x, y):
      ...     loss, grads, norms = lars_jax.nnx_value_grad_and_norms(loss_fn, model, x, y)
      ...     optimizer.update(model, grads, per_example_norms=norms)
      ...     return loss
      >>> first = step(model, optimizer, x, y)
      >>> for _ in range(60):
      ...     loss = step(model, optimizer, x, y)
      >>> bool(loss < 0.1 * first)
      True

    References:
      Goodfellow, "Efficient per-example gradient computations", arXiv 1510.01799, 2015.
    """
    _check_flax_version()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    treedef = jax.tree.structure(params)
    layers = _recognised_layers(model)
    names = _layer_names(layers)
    linen_key = _linen_keys(params, layers, names)
    linen_params: dict[str, dict[str, Any]] = {}
    for (lname, lattr), leaf in zip(linen_key, jax.tree.leaves(params), strict=True):
        linen_params.setdefault(lname, {})[lattr] = leaf
    batch_stats = {
        names[path]: {"mean": layer.mean[...], "var": layer.var[...]}
        for path, layer in layers.items()
        if type(layer) is nnx.BatchNorm
    }
    node_args, packed = _take_graph_nodes(args, kwargs)
    host = _host_module(loss_fn, graphdef, rest, treedef, linen_key, names, node_args)

    def linen_loss(p, batch):
        variables = {"params": p}
        new_stats = None
        if batch_stats:
            variables["batch_stats"] = batch_stats
            (res, new_rest), mutated = host.apply(variables, batch, mutable=["batch_stats"])
            new_stats = mutated["batch_stats"]
        else:
            res, new_rest = host.apply(variables, batch)
        loss, aux = res if has_aux else (res, None)
        return loss, (aux, new_rest, new_stats)

    (loss, (aux, (new_rest, new_nodes), new_stats)), linen_grads, linen_norms = (
        value_grad_and_norms(linen_loss, linen_params, packed, has_aux=True,
                             num_groups=num_groups, method=method,
                             loss_reduction=loss_reduction))
    for (_, original, _), new_state in zip(node_args, new_nodes, strict=True):
        nnx.update(original, new_state)
    nnx.update(model, new_rest)
    for path, layer in layers.items():
        if new_stats is not None and names[path] in new_stats:
            layer.mean[...] = new_stats[names[path]]["mean"]
            layer.var[...] = new_stats[names[path]]["var"]
    grads = jax.tree.unflatten(treedef, [linen_grads[n][a] for n, a in linen_key])
    norms = jax.tree.unflatten(treedef, [linen_norms[n][a] for n, a in linen_key])
    value = (loss, aux) if has_aux else loss
    return value, grads, norms


def _layer_names(layers: dict[tuple[Any, ...], nnx.Module]) -> dict[tuple[Any, ...], str]:
    """The linen module name of every recognised layer: its path, numbered where two
    paths would print alike."""
    names = {path: _path_name(path) for path in layers}
    if len(set(names.values())) != len(names):
        names = {path: f"{i}:{_path_name(path)}" for i, path in enumerate(layers)}
    return names


def _linen_keys(params: nnx.State, layers: dict[tuple[Any, ...], nnx.Module],
                names: dict[tuple[Any, ...], str]) -> list[tuple[str, str]]:
    """``(linen module name, linen attribute)`` of every leaf of `params`, in
    ``jax.tree.flatten`` order.

    Raises:
      ValueError: a parameter that is none of a recognised layer's.
    """
    linen_key: list[tuple[str, str]] = []
    unknown = []
    for path in _param_paths(params):
        owner, attr = path[:-1], path[-1]
        layer = layers.get(owner)
        if layer is None or attr not in _PARAM_NAMES[type(layer)]:
            unknown.append(_path_name(path))
            continue
        linen_key.append((names[owner], _PARAM_NAMES[type(layer)][attr]))
    if unknown:
        raise ValueError(
            "nnx_value_grad_and_norms: these nnx.Param are not the parameters of an "
            "nnx.Linear / Conv / Embed / BatchNorm / LayerNorm / GroupNorm layer (matched "
            f"by exact type): {unknown}"
        )
    return linen_key


def _host_module(loss_fn: Callable[..., Any], graphdef: Any, rest: nnx.State,
                 treedef: Any, linen_key: list[tuple[str, str]],
                 names: dict[tuple[Any, ...], str],
                 node_args: list[tuple[int | str, Any, tuple[Any, Any]]]) -> nn.Module:
    """The linen module whose ``apply(variables, batch)`` runs ``loss_fn`` on a copy of
    the model whose layers call their linen twins: ``(loss_fn's result, (the copy's
    non-parameter state, the states of the argument objects))``."""

    class _Host(nn.Module):
        """Runs ``loss_fn`` on a copy of the model whose layers call linen twins."""

        @nn.compact
        def __call__(self, batch: tuple[tuple, dict]):
            # The copy's parameters are the host's own (the linen "params" leaves), so
            # that reads of them outside the layers (nnx.state, model.layer.kernel) are
            # seen by value_grad_and_norms as such.
            host_params = self.variables.get("params", {})
            p_state = jax.tree.unflatten(
                treedef, [host_params[n][a] for n, a in linen_key])
            copy = nnx.merge(graphdef, p_state, rest, copy=True)
            twins: dict[int, nn.Module] = {}
            for path, layer in _recognised_layers(copy).items():
                twins[id(layer)] = _linen_twin(layer, names[path])
                layer.__class__ = _redirected_class(type(layer), twins)
            a, kw, nodes = _put_graph_nodes(batch, node_args)
            res = loss_fn(copy, *a, **kw)
            return res, (nnx.state(copy, nnx.Not(nnx.Param)), [nnx.state(n) for n in nodes])

    return _Host()


def _take_graph_nodes(
    args: tuple, kwargs: dict
) -> tuple[list[tuple[int | str, Any, tuple[Any, Any]]], tuple[tuple, dict]]:
    """Takes the NNX objects (``nnx.Rngs``, ...) out of the loss's arguments.

    Returns ``[(position or keyword, object, (graphdef, state))]`` and the arguments with
    ``None`` in their place. Inside the pass each is rebuilt from its state (an object
    from outside the traced function cannot be mutated inside it) and the original is
    updated afterwards, as ``nnx.grad`` does.
    """
    nodes = []
    a = list(args)
    kw = dict(kwargs)
    for where, value in [*enumerate(args), *kwargs.items()]:
        if nnx.graph.is_graph_node(value):
            nodes.append((where, value, nnx.split(value)))
            if isinstance(where, int):
                a[where] = None
            else:
                kw[where] = None
    return nodes, (tuple(a), kw)


def _put_graph_nodes(
    batch: tuple[tuple, dict], nodes: list[tuple[int | str, Any, tuple[Any, Any]]]
) -> tuple[list, dict, list]:
    """The arguments with fresh copies of the objects :func:`_take_graph_nodes` took."""
    a, kw = list(batch[0]), dict(batch[1])
    copies = []
    for where, _, (graphdef, state) in nodes:
        copy = nnx.merge(graphdef, state, copy=True)
        copies.append(copy)
        if isinstance(where, int):
            a[where] = copy
        else:
            kw[where] = copy
    return a, kw, copies


def _redirected_class(cls: type, twins: dict[int, nn.Module]) -> type:
    """A subclass of ``cls`` whose ``__call__`` runs the linen twin of the instance."""

    def call(self, x, *args, **kwargs):
        twin = twins[id(self)]
        t = cls
        if t is nnx.Embed:
            if args or kwargs:
                raise ValueError("nnx_value_grad_and_norms: nnx.Embed takes only the ids.")
            if not jnp.issubdtype(x.dtype, jnp.integer):
                raise ValueError("nnx.Embed inputs must be integers.")
            return twin(jax.nn.one_hot(x, self.num_embeddings, dtype=self.param_dtype))
        if t is nnx.BatchNorm:
            use_running_average = kwargs.pop("use_running_average", args[0] if args else None)
            if kwargs.get("mask") is not None or len(args) > 1:
                raise ValueError("nnx_value_grad_and_norms: BatchNorm `mask` is not supported.")
            if use_running_average is None:
                use_running_average = self.use_running_average
            # New running statistics land in the host's "batch_stats" collection and
            # are written back to the model after the pass.
            return twin(x, use_running_average=use_running_average)
        if args or any(v is not None for v in kwargs.values()):
            raise ValueError(
                f"nnx_value_grad_and_norms: {t.__name__} called with extra arguments "
                f"{list(kwargs) or len(args)}; only the input is supported."
            )
        return twin(x)

    def attend(self, *args, **kwargs):
        raise ValueError(
            "nnx_value_grad_and_norms: nnx.Embed.attend (tied embeddings) is not supported."
        )

    namespace = {"__call__": call, "__module__": __name__}
    if cls is nnx.Embed:
        namespace["attend"] = attend
    return type(cls.__name__, (cls,), namespace)
