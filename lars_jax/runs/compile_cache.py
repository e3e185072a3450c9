"""JAX's persistent compilation cache, turned on for the CLI, sweeps and experiments.

Runs that differ only in the learning rate or the weight decay compile to the same program
(both are optimizer-state arrays), so with the cache the second one skips compilation,
which on a small CPU can cost more than training.

References:
  JAX documentation, "Persistent compilation cache".
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "lars_jax_xla"


def enable_compilation_cache(path: str | os.PathLike[str] | None = None,
                             min_compile_time_s: float = 0.5) -> Path:
    """Turns on JAX's persistent compilation cache; returns its folder.

    Args:
      path: the cache folder (default ``$LARS_JAX_CACHE`` or ``~/.cache/lars_jax_xla``).
      min_compile_time_s: programs that compile faster than this are not cached.
    """
    import jax

    folder = Path(path or os.environ.get("LARS_JAX_CACHE") or DEFAULT_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    return folder
