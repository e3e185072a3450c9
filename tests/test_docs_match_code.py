"""The docs say what the code does (issue 30 items 4 and 5): the Outputs section of
docs/cli.md runs on a real run folder, and the helper scripts the docs name honour
``--help``."""

from __future__ import annotations

import ast
import re
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


def _section_blocks(doc: str, title: str) -> list[str]:
    """The ```python blocks of the section `title` (up to the next section of its level)."""
    text = (ROOT / doc).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else None]
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


def test_the_outputs_section_of_cli_md_runs_on_a_real_run(tmp_path, monkeypatch, capsys,
                                                         tiny_fashion_mnist):
    """docs/cli.md's Outputs snippets, as written, on a run folder of a real (tiny) run: they
    read the summary and the metric rows, restore the final parameters of the checkpoint
    and train with train_with_state. Before: no such section, and no restore_checkpoint."""
    import jax
    import numpy as np

    from lars_jax.train import TrainConfig, train_with_state

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(model="mlp1", train_subset=256, test_subset=128, batch_size=64,
                      epochs=1, warmup_epochs=0.0, num_devices=1, log_every_steps=2,
                      workdir="runs/default", progress=False, plot=False, dtype="float32",
                      data_dir=str(tiny_fashion_mnist))
    first, final = train_with_state(cfg)
    capsys.readouterr()
    blocks = _section_blocks("docs/cli.md", "Outputs")
    assert len(blocks) == 3
    namespace: dict = {"__name__": "cli_md_outputs"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/cli.md[Outputs block {i}]", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    # the reading snippet prints what the run wrote: status, accuracy, steps (256/64 = 4)
    assert out[0] == f"ok {first['test_accuracy']} 4"
    train_rows = ast.literal_eval(out[1])  # (step, loss, finite) of the last train rows
    assert [r[0] for r in train_rows] == [2, 4] and [r[2] for r in train_rows] == [1.0, 1.0]
    assert train_rows[-1][1] == pytest.approx(first["train_loss"])
    assert ast.literal_eval(out[2]) == [(4, first["test_accuracy"])]
    assert namespace["summary"]["status"] == "ok" and namespace["step"] == 4
    # the restored parameters are the final ones train returned
    for a, b in zip(jax.tree.leaves(namespace["params"]), jax.tree.leaves(final.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp_path / "runs" / "mine" / "summary.json").exists()


def test_the_error_examples_of_cli_md_are_what_the_command_prints(capsys):
    """Each ``$ lars-jax ...`` of docs/cli.md's Errors block prints the line quoted under it
    and exits 2, whatever the machine's device count (before: an example needed 8 devices,
    and on fewer it printed another error)."""
    import shlex

    from lars_jax.runs import cli

    text = (ROOT / "docs" / "cli.md").read_text()
    block = text[text.index("### Errors"):]
    block = block[block.index("```\n") + 4:]
    examples: list[tuple[str, list[str]]] = []  # (command, the lines printed under it)
    for line in block[:block.index("```")].splitlines():
        if line.startswith("$ "):
            examples.append((line[2:], []))
        else:
            examples[-1][1].append(line)
    assert len(examples) == 3 and all(cmd.startswith("lars-jax ") for cmd, _ in examples)
    for cmd, expected in examples:
        capsys.readouterr()
        try:
            rc = cli.main(shlex.split(cmd)[1:])
        except SystemExit as e:
            rc = e.code
        assert rc == 2, cmd
        assert capsys.readouterr().err.strip().splitlines() == expected, cmd
    assert "--num-devices 8" not in block[:block.index("```")]
