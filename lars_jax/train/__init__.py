"""The large-batch trainer: config, data-parallel train step, checkpoints, metrics, loop.

`train(config)` is the single entry point; `TrainConfig` holds every setting.
"""

from lars_jax.train.config import TrainConfig
from lars_jax.train.loop import train

__all__ = ["TrainConfig", "train"]
