"""Shared test setup: 8 simulated CPU devices for the data-parallel tests.

The flag must be set before JAX initialises its backends, so it lives here, at
the top of the first module pytest imports. Code under test that turns on JAX's
persistent compilation cache (the sweep CLI, the experiment scripts), and JAX's own cache
for every test and the subprocesses they start, write to one fresh temporary folder, not
to the user's ``~/.cache/lars_jax_xla``, so that test runs neither depend on nor change
what earlier runs left there.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LARS_JAX_CACHE", tempfile.mkdtemp(prefix="lars_jax_xla_tests_"))
# JAX's own persistent compilation cache, in a folder made fresh for this test run (the
# xdist workers and the subprocesses the tests start inherit it): the many tests that
# compile the same small programs again in another process reuse them
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["LARS_JAX_CACHE"])
