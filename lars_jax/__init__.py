"""lars_jax: LARS, LARC and CLARS for Optax, fast per-example gradient norms,
and a large-batch ResNet trainer with experiments that test the published claims.

The public API is re-exported here; see each module for references.
"""

__version__ = "0.1.0"

# optimizers: lars_jax.trust_ratio, lars_jax.alias, lars_jax.masks,
# lars_jax.schedules
from lars_jax.alias import clars, larc, lars, sgd  # noqa: F401
from lars_jax.masks import default_mask  # noqa: F401
from lars_jax.schedules import (  # noqa: F401
    gradual_warmup,
    linear_scaling,
    mlperf_lars_schedule,
    onecycle,
    piecewise_linear,
    sqrt_scaling,
)
from lars_jax.trust_ratio import (  # noqa: F401
    LarsTrustRatioState,
    scale_by_clars_trust_ratio,
    scale_by_lars_trust_ratio,
    trust_ratio_stats,
)

# isort: split
# diagnostics: lars_jax.diagnostics
from lars_jax.diagnostics import (  # noqa: F401
    NoiseScaleState,
    layer_diagnostics,
    noise_scale_estimates,
    noise_scale_from_metrics,
    noise_scale_init,
    noise_scale_series,
    noise_scale_update,
)

# isort: split
# command line, sweeps, reports, plots: lars_jax.sweep, lars_jax.report,
# lars_jax.plotting (lars_jax.cli is the `lars-jax` console script)
from lars_jax.plotting import (  # noqa: F401
    plot_bars,
    plot_heatmap,
    plot_layer_stats,
    plot_lines,
    plot_run,
)
from lars_jax.report import (  # noqa: F401
    Section,
    load_results,
    markdown_table,
    summary_report,
    write_report,
)
from lars_jax.sweep import expand_grid, plan_sweep, run_sweep  # noqa: F401

# isort: split
# models: lars_jax.models (ResNets, MAC counts)
from lars_jax import models  # noqa: F401
from lars_jax.models import MODEL_NAMES, count_macs, create_model, flops_per_example  # noqa: F401

# isort: split
# trainer: lars_jax.train (TrainConfig, train)
from lars_jax.train import TrainConfig, train  # noqa: F401

# isort: split
# per-example gradient norms: lars_jax.per_example
from lars_jax.per_example import (  # noqa: F401
    group_gradient_norms,
    per_example_norms_vmap,
    value_grad_and_norms,
)

# isort: split
# data: lars_jax.data (TFDS sources, on-device and host pipelines)
from lars_jax import data  # noqa: F401

# isort: split
# CLARS in training loops: lars_jax.alias (multi_steps), lars_jax.flax_train_state,
# lars_jax.per_example_nnx (Flax NNX); the float64 reference is lars_jax.testing
from lars_jax.alias import MultiStepsNormsState, multi_steps  # noqa: F401
from lars_jax.flax_train_state import TrainState  # noqa: F401
from lars_jax.per_example_nnx import nnx_value_grad_and_norms  # noqa: F401
