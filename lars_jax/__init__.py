"""lars_jax: LARS, LARC and CLARS for Optax, fast per-example gradient norms,
and a large-batch ResNet trainer with experiments that test the published claims.

The public API is re-exported here; see each module for references.
"""

__version__ = "0.1.0"

# diagnostics (helper "experiments"): lars_jax.diagnostics
from lars_jax.diagnostics import (  # noqa: F401
    NoiseScaleState,
    layer_diagnostics,
    noise_scale_estimates,
    noise_scale_from_metrics,
    noise_scale_init,
    noise_scale_series,
    noise_scale_update,
)
