"""A Flax linen ``TrainState`` whose ``apply_gradients`` passes CLARS's norms to the optimizer.

:class:`flax.training.train_state.TrainState` calls ``tx.update(grads, opt_state,
params)`` and treats every other keyword of ``apply_gradients`` as a field to
``.replace()``: ``apply_gradients(grads=g, per_example_norms=n)`` therefore fails, and
CLARS never sees its norms. :class:`TrainState` here is the same dataclass (a drop-in
replacement, subclass it to add ``batch_stats`` etc.) whose ``apply_gradients`` takes
``per_example_norms`` and forwards it to ``tx.update``::

    (loss, grads, norms) = lars_jax.value_grad_and_norms(loss_fn, state.params, x, y)
    state = state.apply_gradients(grads=grads, per_example_norms=norms)

Examples:
  >>> import jax, jax.numpy as jnp, flax.linen as nn, optax, lars_jax
  >>> from lars_jax.flax_train_state import TrainState
  >>> model = nn.Dense(2)
  >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
  >>> state = TrainState.create(apply_fn=model.apply,
  ...                           params=model.init(jax.random.key(0), x)["params"],
  ...                           tx=lars_jax.clars(0.1))
  >>> loss_fn = lambda p, x, y: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)
  >>> loss, grads, norms = lars_jax.value_grad_and_norms(loss_fn, state.params, x, y)
  >>> state = state.apply_gradients(grads=grads, per_example_norms=norms)
  >>> int(state.step)
  1

References:
  Flax, ``flax.training.train_state.TrainState``.

  Huo, Gu, Huang, `Large Batch Training Does Not Need Warmup
  <https://arxiv.org/abs/2002.01576>`_, 2020 (CLARS).
"""

from __future__ import annotations

from typing import Any

import optax
from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT
from flax.training import train_state

__all__ = ["TrainState"]


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` that forwards ``per_example_norms``.

    Identical to Flax's class (fields ``step``, ``apply_fn``, ``params``, ``tx``,
    ``opt_state``; ``create``), except that :meth:`apply_gradients` passes
    ``per_example_norms`` to ``tx.update`` instead of treating it as a field.
    """

    def apply_gradients(self, *, grads: Any, per_example_norms: Any = None, **kwargs: Any):
        """Updates ``step``, ``params`` and ``opt_state``; ``.replace()``-s ``kwargs``.

        Args:
          grads: gradients with the structure of ``params``.
          per_example_norms: for CLARS (:func:`lars_jax.clars`), a pytree like
            ``params`` with leaves of shape ``(n,)``, passed to ``tx.update`` as
            ``per_example_norms=``; None (the default) passes nothing, as Flax does.
          **kwargs: further dataclass fields to replace (e.g. ``batch_stats``).

        Returns:
          The new state, with ``step`` incremented by one.
        """
        overwrite = OVERWRITE_WITH_GRADIENT in grads
        grads_with_opt = grads["params"] if overwrite else grads
        params_with_opt = self.params["params"] if overwrite else self.params
        extra = {}
        if per_example_norms is not None:
            if overwrite and "params" in per_example_norms:
                per_example_norms = per_example_norms["params"]
            extra["per_example_norms"] = per_example_norms
        updates, new_opt_state = self.tx.update(
            grads_with_opt, self.opt_state, params_with_opt, **extra
        )
        new_params_with_opt = optax.apply_updates(params_with_opt, updates)
        if overwrite:
            new_params = {
                "params": new_params_with_opt,
                OVERWRITE_WITH_GRADIENT: grads[OVERWRITE_WITH_GRADIENT],
            }
        else:
            new_params = new_params_with_opt
        return self.replace(
            step=self.step + 1, params=new_params, opt_state=new_opt_state, **kwargs
        )
