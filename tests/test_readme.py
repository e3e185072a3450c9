"""README.md and docs/using.md Python blocks run as written, top to bottom; the modules'
examples run in CI (as doctests of the `lars_jax` package)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(name: str) -> list[str]:
    return _BLOCK.findall((ROOT / name).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["README.md", "docs/using.md"])
def test_python_blocks_run_in_order(name):
    blocks = _blocks(name)
    assert blocks, f"{name} has no python blocks"
    namespace: dict = {"__name__": f"{name}_blocks"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{name}[block {i}]", "exec"), namespace)  # noqa: S102
        except Exception as e:  # noqa: BLE001 - re-raised with the block's number
            raise AssertionError(f"{name}: python block {i} failed: {e!r}\n{code}") from e


_EXAMPLE_MODULES = ["lars_jax.trust_ratio", "lars_jax.alias", "lars_jax.masks",
                    "lars_jax.testing", "lars_jax.flax_train_state", "lars_jax.per_example_nnx"]


def test_ci_runs_the_docstring_examples():
    """The Examples sections of the optimizer and integration modules run as doctests in
    CI: its command (`bash quickstart.sh test`, which .ci/run calls) collects the
    `lars_jax` package with ``--doctest-modules`` (pyproject's pytest addopts). They used
    to run here a second time, with `doctest.testmod`; this checks that they still run
    there and that each module still has examples."""
    import tomllib

    test_cmd = next(line for line in (ROOT / "quickstart.sh").read_text().splitlines()
                    if line.strip().startswith("test)"))
    assert " pytest " in test_cmd and " lars_jax " in test_cmd, test_cmd
    assert "bash quickstart.sh test" in (ROOT / ".ci" / "run").read_text()
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    for module in _EXAMPLE_MODULES:
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        assert ">>> " in source, f"{module}: no docstring example"
