"""The files of a run and of a sweep: names, JSON and JSON Lines with one policy.

A run's workdir holds ``config.json``, ``metrics.jsonl`` (one row per log step and per
evaluation), ``summary.json`` and ``curves.png``; a sweep's folder holds ``sweep.json``,
``results.jsonl`` (one row per finished or failed run) and one workdir per run.

One encoding: numpy and JAX scalars and arrays become Python numbers and lists, and the
non-finite floats NaN, +Inf and -Inf are written as ``null`` (strict JSON has no NaN), so
every file here is read back by any JSON parser.

One reading policy for JSON Lines: blank lines are skipped; a last line without its
newline that does not parse is the row a killed process was writing, and is dropped; any
other line that does not parse, or is not a JSON object, is an error naming the file and
the line (`read_jsonl`), or, for the readers that must go on past one damaged run (sweep,
report, plots: `read_jsonl_skipping`), skipped and named in one line on stderr. Appending
first ends a cut-off last line, so a new row never continues a damaged one.

References:
  JSON Lines, https://jsonlines.org.
  RFC 8259, "The JavaScript Object Notation (JSON) Data Interchange Format" (no NaN).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike[str]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
RESULTS_FILE = "results.jsonl"
SWEEP_FILE = "sweep.json"

# The keys the trainer writes, defined once for its readers (plotting, report, sweep and
# the experiments' harness), which accept no other spelling.
# Rows of metrics.jsonl: ``KIND`` is ``TRAIN_ROW`` (``STEP``, ``EPOCH``, ``LOSS``,
# ``ACCURACY``, ``LR``, ``IMAGES_PER_S``, ...) or ``EVAL_ROW`` (``TEST_LOSS``,
# ``TEST_ACCURACY``).
KIND, TRAIN_ROW, EVAL_ROW = "kind", "train", "eval"
STEP, EPOCH, LR, IMAGES_PER_S = "step", "epoch", "lr", "images_per_s"
LOSS, ACCURACY = "loss", "accuracy"
TEST_LOSS, TEST_ACCURACY = "test_loss", "test_accuracy"
# summary.json: ``STATUS`` is ``STATUS_OK`` or ``STATUS_NONFINITE`` (the run stopped on
# NaN/Inf), plus TEST_ACCURACY, TEST_LOSS and the keys below.
STATUS, STATUS_OK, STATUS_NONFINITE = "status", "ok", "nonfinite"
TRAIN_LOSS, TRAIN_ACCURACY, STEPS = "train_loss", "train_accuracy", "steps"
WALL_TIME_S, TRAIN_TIME_S, CONFIG = "wall_time_s", "train_time_s", "config"
# Rows of a sweep's results.jsonl: ``RUN`` (the run's folder name), ``WORKDIR``, ``STATUS``
# (``RUN_DONE`` or ``RUN_FAILED``), ``VARIED`` (the swept fields), ``CONFIG``, ``SUMMARY``
# (summary.json without its config) and, for a failed run, ``ERROR`` and, when it failed
# for its storage (disk full, read-only: a plain rerun runs it again), ``ENVIRONMENTAL``.
RUN, WORKDIR, VARIED, SUMMARY, ERROR = "run", "workdir", "varied", "summary", "error"
ENVIRONMENTAL = "environmental"
RUN_DONE, RUN_FAILED = "done", "failed"


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON values: numpy/JAX numbers to Python, NaN and +-Inf to None.

    Example:
      >>> import numpy as np
      >>> to_jsonable({"a": np.float32(0.5), "b": [float("nan"), np.inf], "c": (1, 2)})
      {'a': 0.5, 'b': [None, None], 'c': [1, 2]}

    Raises:
      TypeError: a value that is neither a number, a string, a bool, None, a path, a
        mapping, a sequence nor an array.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, int | float | np.ndarray | np.generic) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.ndim:
            return [to_jsonable(v) for v in arr]
        v = arr.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    raise TypeError(f"cannot write a {type(value).__name__} as JSON: {value!r}")


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` of `to_jsonable(value)` (strict JSON: no NaN or Infinity)."""
    return json.dumps(to_jsonable(value), allow_nan=False, **kwargs)


def write_json(path: PathLike, value: Any) -> None:
    """Writes `value` as indented JSON, atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: PathLike) -> Any:
    """The value of a JSON file; a file that does not parse raises ValueError naming it."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def append_jsonl(path: PathLike, row: Mapping[str, Any], *, sync: bool = False) -> None:
    """Appends one row to a JSON Lines file (with ``sync``, flushed to disk).

    A last line without its newline (cut off by a killed process) is ended first, so the
    new row is a line of its own and the cut-off one stays a single damaged line.
    """
    cut_off = False
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut_off = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if cut_off else "") + dumps(row) + "\n")
        if sync:
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: PathLike, rows: list[Mapping[str, Any]]) -> None:
    """Replaces a JSON Lines file with `rows`, atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file (the policy is in the module docstring).

    Example:
      >>> import pathlib, tempfile
      >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
      >>> _ = p.write_text('{"step": 1, "loss": null}\\n{"step": 2, "lo')
      >>> read_jsonl(p)
      [{'step': 1, 'loss': None}]

    Raises:
      FileNotFoundError: no such file.
      ValueError: a line other than an unterminated last one is not a JSON object; the
        message names the file and the line number.
    """
    rows, bad = read_jsonl_lines(path)
    if bad:
        raise ValueError(f"{path}: line {bad[0]} is not a JSON object")
    return rows


def read_jsonl_skipping(path: PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file that parse; the damaged lines are skipped and named in
    one line on stderr (for readers that go on past one damaged run: sweep, report, plots).

    Raises:
      FileNotFoundError: no such file.
    """
    rows, bad = read_jsonl_lines(path)
    if bad:
        print(f"lars_jax: {path}: line(s) {', '.join(map(str, bad))} not valid JSON rows; "
              "skipped", file=sys.stderr, flush=True)
    return rows


def read_jsonl_lines(path: PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of a JSON Lines file that parse, and the numbers (from 1) of the lines
    that do not (an unterminated last line that does not parse is neither: it is the row
    a killed process was writing)."""
    text = Path(path).read_text()
    lines = text.split("\n")  # the last element is "" when the file ends with a newline
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: cut off by a crash
                break
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(i + 1)
    return rows, bad


def is_primary_process() -> bool:
    """False on processes other than 0 of a multi-host run (only process 0 writes files).

    Looks at JAX only when something has imported it already (no JAX: one process).
    """
    jax = sys.modules.get("jax")
    if jax is None:
        return True
    try:
        return jax.process_index() == 0
    except Exception:  # no backend: a single process
        return True


def noise_scale_from_metrics(path: PathLike, ema: float = 0.95, **kwargs: Any
                             ) -> dict[str, np.ndarray]:
    """`lars_jax.diagnostics.noise_scale_from_rows` of a run's ``metrics.jsonl``.

    Args:
      path: the ``metrics.jsonl`` file, or the run directory holding it.
      ema: EMA decay in ``[0, 1)``.
      **kwargs: ``step_key`` and ``row_filter`` of ``noise_scale_from_rows``.

    Raises:
      ValueError: `path` does not exist.
    """
    from lars_jax.diagnostics import noise_scale_from_rows

    p = Path(path)
    p = p / METRICS_FILE if p.is_dir() else p
    if not p.exists():
        raise ValueError(f"path {str(p)!r} does not exist")
    return noise_scale_from_rows(read_jsonl(p), ema, **kwargs)
