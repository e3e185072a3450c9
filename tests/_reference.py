"""Float64 NumPy reference of You et al.'s LARS (Algorithm 1), written from the paper.

Independent of lars_jax and optax: plain loops over lists of tensors, so that the
tests compare two separate implementations of the same formulas.

    ratio = tc * ||w|| / (||g|| + wd * ||w|| + eps)          paper
    ratio = tc * ||w|| / (||g + wd * w|| + eps)              optax
    ratio = tc * ||w|| / (mean_i ||g_i|| + wd * ||w|| + eps) CLARS (given the mean)
    ratio = 1 if a norm is 0;  ratio = min(ratio, clip) with LARC
    masked:   v = m * v + lr * ratio * (g + wd * w)
    unmasked: v = m * v + lr * g
    w = w - v              (Nesterov: w - (m * v + lr * u))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.asarray(x, np.float64) ** 2)))


def trust_ratio(
    w: np.ndarray, g: np.ndarray, *, wd: float, tc: float, eps: float = 0.0,
    denominator: str = "paper", clip: float | None = None, grad_norm: float | None = None,
) -> float:
    """The per-tensor ratio in float64."""
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    wn = norm(w)
    if denominator == "paper":
        gn = norm(g) if grad_norm is None else float(grad_norm)
        denom = gn + wd * wn + eps
    elif denominator == "optax":
        gn = norm(g + wd * w)
        denom = gn + eps
    else:
        raise ValueError(denominator)
    if wn == 0.0 or gn == 0.0:
        return 1.0
    r = tc * wn / denom
    return min(r, clip) if clip is not None else r


def lars_step(
    ws: Sequence[np.ndarray], gs: Sequence[np.ndarray], vs: Sequence[np.ndarray], *,
    lr: float, wd: float, tc: float, momentum: float, mask: Sequence[bool],
    nesterov: bool = False, eps: float = 0.0, denominator: str = "paper",
    clip: float | None = None, grad_norms: Sequence[float | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """One step of Algorithm 1 on lists of tensors; returns (new_w, new_v, update)."""
    new_w, new_v, upd = [], [], []
    grad_norms = grad_norms if grad_norms is not None else [None] * len(ws)
    for w, g, v, m_, gn in zip(ws, gs, vs, mask, grad_norms, strict=True):
        w = np.asarray(w, np.float64)
        g = np.asarray(g, np.float64)
        v = np.asarray(v, np.float64)
        if m_:
            r = trust_ratio(w, g, wd=wd, tc=tc, eps=eps, denominator=denominator,
                            clip=clip, grad_norm=gn)
            u = lr * r * (g + wd * w)
        else:
            u = lr * g
        v = momentum * v + u
        step = momentum * v + u if nesterov else v
        new_w.append(w - step)
        new_v.append(v)
        upd.append(-step)
    return new_w, new_v, upd


def lars_run(
    ws: Sequence[np.ndarray], grads_per_step: Sequence[Sequence[np.ndarray]], *,
    lrs: Sequence[float], wds: Sequence[float], **kw,
) -> list[np.ndarray]:
    """Several steps with per-step learning rates and weight decays; returns final weights."""
    ws = [np.asarray(w, np.float64) for w in ws]
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
