"""Shared test setup: 8 simulated CPU devices for the data-parallel tests.

The flag must be set before JAX initialises its backends, so it lives here, at
the top of the first module pytest imports. Code under test that turns on JAX's
persistent compilation cache (the sweep CLI, the experiment scripts) writes it to a
fresh temporary folder, not to the user's ``~/.cache/lars_jax_xla``, so that test
runs neither depend on nor change what earlier runs left there.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LARS_JAX_CACHE", tempfile.mkdtemp(prefix="lars_jax_xla_tests_"))
