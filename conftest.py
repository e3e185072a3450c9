"""Shared test setup: 8 simulated CPU devices for the data-parallel tests, quick compilation.

The flags must be set before JAX initialises its backends, so they live here, at the top
of the first module pytest imports. Compiling is most of the suite's time: the tests
compile with XLA:CPU's quick settings (`tests/_xla_env.py`; the processes they start get
the same flags, so bitwise comparisons across processes hold).

Code under test that turns on JAX's persistent compilation cache (the sweep CLI, the
experiment scripts), and JAX's own cache for every test and the subprocesses they start,
write to one fresh temporary folder, not to the user's ``~/.cache/lars_jax_xla``, so that
test runs neither depend on nor change what earlier runs left there.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))
from _xla_env import DEVICE_COUNT_FLAG, quick_compile_flags  # noqa: E402

# 8 simulated devices; XLA:CPU's quick compilation settings (tests/_xla_env.py: they halve
# the suite's time, most of which is compiling)
os.environ.setdefault("XLA_FLAGS", f"{DEVICE_COUNT_FLAG}=8 {quick_compile_flags()}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LARS_JAX_CACHE", tempfile.mkdtemp(prefix="lars_jax_xla_tests_"))
# JAX's own persistent compilation cache, in a folder made fresh for this test run (the
# xdist workers and the subprocesses the tests start inherit it): programs that compile
# for over a second (JAX's default threshold) are reused by tests in other processes
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["LARS_JAX_CACHE"])


def pytest_collection_modifyitems(config, items):
    """Start the slow tests first, spread over the xdist workers.

    ``--dist worksteal`` hands each of the n workers a contiguous share of the collection
    (sizes as its scheduler cuts them) and lets idle workers take tests from the end of
    another's share. So each share here starts with whole modules that hold tests marked
    ``slow`` (a module stays together: its module fixtures are set up once), dealt so that
    the shares get about as many slow tests, and ends with quick ones: no long test starts
    last. Without xdist the slow modules simply run first.
    """
    n = int(getattr(config, "workerinput", {}).get("workercount", 1))
    modules: dict[object, list] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)
    slow = {path: sum(1 for i in group if i.get_closest_marker("slow")) for path, group in
            modules.items()}
    units = sorted((p for p in modules if slow[p]), key=lambda p: -slow[p])
    shares: list[list] = [[] for _ in range(n)]
    load = [0] * n
    for path in units:
        k = load.index(min(load))
        shares[k].extend(modules[path])
        load[k] += slow[path]
    rest = [i for p, group in modules.items() if not slow[p] for i in group]
    remaining, order = len(items), []
    for k in range(n):
        size = remaining // (n - k)  # the worksteal scheduler's initial cut
        take = max(0, size - len(shares[k])) if k < n - 1 else len(rest)
        order += shares[k] + rest[:take]
        rest = rest[take:]
        remaining -= size
    assert len(order) == len(items)
    items[:] = order
