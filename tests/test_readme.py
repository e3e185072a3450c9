"""The Python blocks of README.md and docs/using.md run as written, top to bottom."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(name: str) -> list[str]:
    return _BLOCK.findall((ROOT / name).read_text())


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
