"""XLA flags of the tests and of the processes they start.

The root ``conftest.py`` compiles every test program with XLA:CPU's quick settings
(`QUICK_COMPILE`): compilation is most of the suite's time and these halve it. They change
only how XLA generates code (float rounding of fused elementwise work may differ in the last
bits), never what the program computes; every comparison in the suite is between programs
compiled under the same flags, in one process or in subprocesses started with
`xla_flags`. Where a test asserts something about XLA's default compilation itself
(compiled memory), it compiles with ``compiler_options=XLA_DEFAULTS``.
"""

from __future__ import annotations

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

QUICK_COMPILE = {
    "xla_cpu_use_fusion_emitters": False,  # the older loop emitters compile faster
    "xla_backend_optimization_level": 0,  # LLVM -O0 instead of -O3
    "xla_llvm_disable_expensive_passes": True,
}

# The same options at XLA's defaults (xla/debug_options_flags.cc,
# DefaultDebugOptionsIgnoringFlags), as `compiler_options` for one compilation.
XLA_DEFAULTS = {
    "xla_cpu_use_fusion_emitters": True,
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
}


def quick_compile_flags() -> str:
    """`QUICK_COMPILE` as XLA_FLAGS text."""
    return " ".join(f"--{k}={str(v).lower()}" for k, v in QUICK_COMPILE.items())


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with `devices` CPU devices: this process's flags (the
    quick compilation settings included) with the device count replaced."""
    rest = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith(DEVICE_COUNT_FLAG + "=")]
    return " ".join([f"{DEVICE_COUNT_FLAG}={devices}", *rest])
