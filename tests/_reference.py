"""Test helpers around the float64 NumPy reference of LARS (now :mod:`lars_jax.testing`).

The reference itself ships with the library as :mod:`lars_jax.testing` (independent of
lars_jax's transforms and of optax). This module keeps the short names the tests use
(``norm``, ``trust_ratio``, ``lars_step``, ``lars_run``) and the random trees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lars_jax.testing import reference_lars_step, reference_norm, reference_trust_ratio

norm = reference_norm


def trust_ratio(w, g, *, wd: float, tc: float, **kw) -> float:
    """The per-tensor ratio in float64 (see :func:`lars_jax.testing.reference_trust_ratio`)."""
    return reference_trust_ratio(w, g, weight_decay=wd, trust_coefficient=tc, **kw)


def lars_step(ws, gs, vs, *, lr: float, wd: float, tc: float, **kw):
    """One step of Algorithm 1 on lists of tensors; returns (new_w, new_v, update)."""
    return reference_lars_step(ws, gs, vs, learning_rate=lr, weight_decay=wd,
                               trust_coefficient=tc, **kw)


def lars_run(
    ws: Sequence[np.ndarray], grads_per_step: Sequence[Sequence[np.ndarray]], *,
    lrs: Sequence[float], wds: Sequence[float], **kw,
) -> list[np.ndarray]:
    """Several steps with per-step learning rates and weight decays; returns final weights."""
    ws = [np.asarray(w) for w in ws]
    ws = [w.astype(np.complex128 if np.iscomplexobj(w) else np.float64) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for gs, lr, wd in zip(grads_per_step, lrs, wds, strict=True):
        ws, vs, _ = lars_step(ws, gs, vs, lr=lr, wd=wd, **kw)
    return ws


# Shapes of small parameter tensors: scalars, biases, kernels, conv kernels.
SHAPES = [(), (3,), (5,), (4, 3), (2, 7), (3, 3, 2, 4), (1, 1, 3, 2)]


def random_tree(seed: int, shape_ids: Sequence[int], scale: float = 1.0) -> dict:
    """A dict pytree of float64 NumPy arrays with shapes ``SHAPES[i]``, nested one level."""
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for k, i in enumerate(shape_ids):
        arr = scale * rng.standard_normal(SHAPES[i % len(SHAPES)])
        group = tree.setdefault(f"layer{k // 2}", {})
        group[f"p{k % 2}"] = np.asarray(arr)
    return tree
