"""README.md and docs/using.md Python blocks run as written, top to bottom; module examples run."""

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


@pytest.mark.parametrize("module", [
    "lars_jax.trust_ratio", "lars_jax.alias", "lars_jax.masks", "lars_jax.testing",
    "lars_jax.flax_train_state", "lars_jax.per_example_nnx",
])
def test_docstring_examples_run(module):
    """The Examples sections of the optimizer and integration modules (CI runs tests/ only)."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module),
                             optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{module}: {result.failed} docstring example(s) failed"
