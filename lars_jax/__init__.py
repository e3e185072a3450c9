"""lars_jax: LARS, LARC and CLARS for Optax, fast per-example gradient norms,
and a large-batch ResNet trainer with experiments that test the published claims.

The public API is re-exported here; see each module for references.
"""

__version__ = "0.1.0"

# optimizers (helper "optim"): lars_jax.trust_ratio, lars_jax.alias, lars_jax.masks,
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
