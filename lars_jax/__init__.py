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

# isort: split
# command line, sweeps, reports, plots (helper "cli"): lars_jax.sweep, lars_jax.report,
# lars_jax.plotting (lars_jax.cli is the `lars-jax` console script)
from lars_jax.plotting import plot_heatmap, plot_lines, plot_run  # noqa: F401
from lars_jax.report import (  # noqa: F401
    Section,
    load_results,
    markdown_table,
    summary_report,
    write_report,
)
from lars_jax.sweep import expand_grid, plan_sweep, run_sweep  # noqa: F401
