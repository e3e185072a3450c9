"""The docs say what the code does (issue 30 items 4 and 5): the Outputs section of
docs/cli.md runs on a real run folder, and the helper scripts the docs name honour
``--help``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_make_readme_help_prints_help_and_writes_nothing(monkeypatch, capsys):
    """Before: ``--help`` was ignored and experiments/README.md was written again."""
    readme = ROOT / "experiments" / "README.md"
    before = (readme.stat().st_mtime_ns, readme.read_bytes())
    monkeypatch.setattr(sys, "argv", ["make_readme.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "experiments" / "make_readme.py"), run_name="__main__")
    assert e.value.code == 0
    assert "usage: python experiments/make_readme.py" in capsys.readouterr().out
    assert (readme.stat().st_mtime_ns, readme.read_bytes()) == before
