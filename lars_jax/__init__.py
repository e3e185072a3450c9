"""lars_jax: LARS, LARC and CLARS for Optax, fast per-example gradient norms,
and a large-batch ResNet trainer with experiments that test the published claims.

The public API is re-exported here; see each module for references.
"""

__version__ = "0.1.0"
