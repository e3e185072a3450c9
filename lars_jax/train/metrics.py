"""Metrics output: JSONL rows per logged step and per evaluation, a final summary JSON,
optional TensorBoard.

Files in the run's workdir:

* ``metrics.jsonl``: one JSON object per line. Training rows have ``"kind": "train"`` and
  ``step``, ``epoch``, ``loss``, ``accuracy`` (means over the steps since the last row),
  ``lr`` (the effective rate of the step), ``grad_norm``, ``param_norm``, ``images_per_s``,
  the noise-scale statistics ``grad_sqnorm_small``, ``grad_sqnorm_big``, ``batch_small``,
  ``batch_big`` (whenever a step has >= 2 gradient groups), and with ``log_layer_stats``
  per-layer ``trust_ratio/<layer>``, ``weight_norm/<layer>``, ``grad_norm/<layer>``
  (``diag/<layer>/<name>`` with ``log_diagnostics``). Evaluation rows have
  ``"kind": "eval"`` and ``test_loss``, ``test_accuracy``.
* ``summary.json``: the final summary (see `lars_jax.train.train`).
* ``config.json``: the run's config.

Only process 0 writes (multi-host runs log once).

References:
  JSON Lines, https://jsonlines.org.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"


def to_python(value: Any) -> Any:
    """Converts numpy / JAX scalars and arrays to JSON-friendly Python values (NaN -> None)."""
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, str | bool) or value is None:
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        v = arr.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else (math.inf if v > 0 else -math.inf)
        return v
    return [to_python(v) for v in arr]


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_python(obj), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete rows of a JSONL file (a truncated last line, from a crash, is ignored)."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsWriter:
    """Appends metric rows to ``<workdir>/metrics.jsonl`` (and TensorBoard, if asked).

    Args:
      workdir: the run folder.
      enabled: False on processes other than 0 (nothing is written).
      tensorboard: also write TensorBoard scalars (needs ``tensorboardX``; a warning is
        printed once when it is missing).
      resume_step: when resuming from a checkpoint at this step, rows written after it by
        the interrupted run are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, enabled: bool = True,
                 tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.path = Path(workdir) / METRICS_FILE
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, self.path)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                print("lars_jax: tensorboard=True but tensorboardX is not installed "
                      "(pip install tensorboardX); writing JSONL only.")
            else:
                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def write(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Writes one row (values converted to Python numbers); returns the converted row."""
        out = to_python(dict(row))
        if not self.enabled:
            return out
        self._file.write(json.dumps(out) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(out.get("step", 0))
            prefix = out.get("kind", "train")
            for k, v in out.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)
        return out

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def mean_rows(rows: list[Mapping[str, Any]], mean_keys: tuple[str, ...]) -> dict[str, Any]:
    """Combines per-step metric dicts: the mean of `mean_keys`, the last value of the rest."""
    out = dict(rows[-1])
    for k in mean_keys:
        vals = [float(np.asarray(r[k])) for r in rows if k in r]
        if vals:
            out[k] = float(np.mean(vals))
    return out
