"""The large-batch trainer: config, data-parallel train step, checkpoints, metrics, loop.

`train(config)` is the single entry point and `TrainConfig` holds every setting (its
defaults are the README's main job: ResNet-20 on Fashion-MNIST with LARS). The modules:

* `config`: `TrainConfig` (help text per field, `validate()` before any compute, the
  BatchNorm statistics span ``bn_span`` documented there).
* `build`: `build(config, data) -> Run`, everything before the first step (data on the
  devices, model, learning-rate function, optimizer, state, compiled step and evaluation
  functions; the schedule table `SCHEDULES`); the benchmarks time the step it builds.
* `step`: the pure per-device train step (gradient accumulation over micro-batches with
  ``lax.scan``, BN statistics, CLARS norms, gradient-noise-scale statistics, NaN guard).
* `parallel`: the same step under ``jax.jit`` + ``jax.shard_map`` on a ``"data"`` mesh or
  under ``jax.pmap``; multi-host via ``jax.distributed``.
* `checkpoint`: Orbax checkpoints, atomic, with fallback past corrupt/incompatible ones.
* `metrics`: JSONL rows (through `lars_jax.runs.run_files`), optional TensorBoard.
* `loop`: `train`, a loop over the built run's steps.

Example:
  >>> from lars_jax.train import TrainConfig
  >>> cfg = TrainConfig(batch_size=4096, grad_accum_steps=4, optimizer="clars")
  >>> cfg.validate(device_count=8).micro_batch_size(8)
  128
  >>> try:
  ...     TrainConfig(batch_size=100).validate(device_count=8)
  ... except ValueError as e:
  ...     print(str(e)[:52])
  TrainConfig.batch_size=100: global batch must be div

  Then ``lars_jax.train.train(cfg)`` runs it and returns the summary dict; after
  ``import lars_jax`` the same is ``lars_jax.train.train(cfg)`` (the package root has no
  function named ``train``).

References:
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017
  (arXiv 1708.03888).
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
  (arXiv 1706.02677).
"""

from lars_jax.train.build import Data, Run, build
from lars_jax.train.config import TrainConfig
from lars_jax.train.loop import NonFiniteError, train, train_with_state

__all__ = ["Data", "NonFiniteError", "Run", "TrainConfig", "build", "train", "train_with_state"]
