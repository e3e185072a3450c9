"""The training loop: `train(config) -> summary dict` (being built step by step)."""

from __future__ import annotations

from typing import Any

from lars_jax.train.config import TrainConfig


def train(config: TrainConfig) -> dict[str, Any]:
    """Runs one training job described by `config`; returns the summary dict."""
    config.validate()
    raise NotImplementedError("train() lands in the next commits")
