"""lars_jax: LARS, LARC and CLARS for Optax, fast per-example gradient norms,
and a large-batch ResNet trainer with experiments that test the published claims.

``import lars_jax`` loads the core only: the optimizers (`lars_jax.trust_ratio`,
`lars_jax.alias`, `lars_jax.masks`, `lars_jax.schedules`), the in-jit diagnostics
(`lars_jax.diagnostics`), per-example gradient norms (`lars_jax.per_example`) and the models
(`lars_jax.models`); it needs only jax, optax, flax, chex and numpy. The float64 reference
for tests (`lars_jax.testing`) is core too, loaded on first access. The tooling built on it
is in subpackages, imported on first use (``pip install 'lars-jax[train]'`` for their
dependencies):

* `lars_jax.train`: ``TrainConfig`` and ``train(config)`` (``lars_jax.train.train``),
* `lars_jax.data`: TFDS data sets without TensorFlow,
* `lars_jax.runs`: the command line (``lars-jax``, `lars_jax.runs.cli`), sweeps, reports,
  plots, config files and the run files they share.

The folders show the layering: modules at the package root are the core; `train`, `data`
and `runs` are the tooling, and import the core, never the other way round.

Example:
  >>> import lars_jax
  >>> tx = lars_jax.lars(learning_rate=0.1, weight_decay=1e-4)
  >>> lars_jax.train.TrainConfig().optimizer
  'lars'
"""

import importlib
from typing import Any

__version__ = "0.1.0"

from lars_jax import models

# CLARS in training loops: gradient accumulation (multi_steps), a linen TrainState that
# forwards per_example_norms, per-example norms of Flax NNX models
from lars_jax.alias import MultiStepsNormsState, clars, larc, lars, multi_steps, sgd
from lars_jax.diagnostics import (
    NoiseScaleAverage,
    NoiseScaleEstimate,
    NoiseScaleState,
    layer_diagnostics,
    noise_scale_average,
    noise_scale_estimates,
    noise_scale_from_norms,
    noise_scale_from_rows,
    noise_scale_from_sqnorms,
    noise_scale_init,
    noise_scale_series,
    noise_scale_update,
)
from lars_jax.flax_train_state import TrainState
from lars_jax.masks import default_mask
from lars_jax.models import MODEL_NAMES, count_macs, create_model, flops_per_example
from lars_jax.per_example import (
    group_gradient_norms,
    per_example_norms_vmap,
    value_grad_and_norms,
)
from lars_jax.per_example_nnx import nnx_value_grad_and_norms
from lars_jax.schedules import (
    gradual_warmup,
    linear_scaling,
    mlperf_decay_steps,
    mlperf_lars_schedule,
    mlperf_total_steps,
    onecycle,
    piecewise_linear,
    sqrt_scaling,
)
from lars_jax.trust_ratio import (
    LarsTrustRatioState,
    scale_by_clars_trust_ratio,
    scale_by_lars_trust_ratio,
    trust_ratio_stats,
)

# Subpackages above the core, imported on first attribute access (``lars_jax.train``) so
# that ``import lars_jax`` loads neither orbax, grain, TFDS nor matplotlib.
TOOLING = ("data", "runs", "train")
# Core modules that ``import lars_jax`` does not load, imported on first attribute access
# the same way (the float64 reference is for tests only).
LAZY_CORE = ("testing",)


def __getattr__(name: str) -> Any:
    if name in TOOLING or name in LAZY_CORE:
        return importlib.import_module(f"lars_jax.{name}")
    raise AttributeError(f"module 'lars_jax' has no attribute {name!r}")


__all__ = [
    "LarsTrustRatioState",
    "MODEL_NAMES",
    "MultiStepsNormsState",
    "NoiseScaleAverage",
    "NoiseScaleEstimate",
    "NoiseScaleState",
    "TrainState",
    "clars",
    "count_macs",
    "create_model",
    "default_mask",
    "flops_per_example",
    "gradual_warmup",
    "group_gradient_norms",
    "larc",
    "lars",
    "layer_diagnostics",
    "linear_scaling",
    "mlperf_decay_steps",
    "mlperf_lars_schedule",
    "mlperf_total_steps",
    "models",
    "multi_steps",
    "nnx_value_grad_and_norms",
    "noise_scale_average",
    "noise_scale_estimates",
    "noise_scale_from_norms",
    "noise_scale_from_sqnorms",
    "noise_scale_from_rows",
    "noise_scale_init",
    "noise_scale_series",
    "noise_scale_update",
    "onecycle",
    "per_example_norms_vmap",
    "piecewise_linear",
    "scale_by_clars_trust_ratio",
    "scale_by_lars_trust_ratio",
    "sgd",
    "sqrt_scaling",
    "trust_ratio_stats",
    "value_grad_and_norms",
]
