"""The tests' one tiny data set: random uint8 images whose label says which half (left or
right columns) is brighter, so a small model learns it in a few steps."""

from __future__ import annotations

import numpy as np


def tiny_data(num_train: int = 256, num_test: int = 64, side: int = 12):
    """`num_train` + `num_test` random ``side x side`` grey images (seed 0), two classes,
    normalised with mean 0.5 and std 0.25 (a `lars_jax.train.Data`)."""
    from lars_jax.train import Data

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (num_train + num_test, side, side, 1), dtype=np.uint8)
    half = side // 2
    y = (x[:, :half].mean((1, 2, 3)) > x[:, half:].mean((1, 2, 3))).astype(np.int32)
    return Data(x[:num_train], y[:num_train], x[num_train:], y[num_train:], 2, 0.5, 0.25)
