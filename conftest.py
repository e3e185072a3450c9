"""Shared test setup: 8 simulated CPU devices for the data-parallel tests.

The flag must be set before JAX initialises its backends, so it lives here, at
the top of the first module pytest imports.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
