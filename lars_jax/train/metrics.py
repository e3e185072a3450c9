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

File names, the JSON encoding (NaN and Inf as ``null``) and the reading policy are those of
`lars_jax.runs.run_files`.

Only process 0 writes (multi-host runs log once).

References:
  JSON Lines, https://jsonlines.org.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lars_jax.runs.run_files import METRICS_FILE, dumps, read_jsonl_lines, to_jsonable, write_jsonl


class MetricsWriter:
    """Appends metric rows to ``<workdir>/metrics.jsonl`` (and TensorBoard, if asked).

    Args:
      workdir: the run folder.
      enabled: False on processes other than 0 (nothing is written).
      tensorboard: also write TensorBoard scalars (needs ``tensorboardX``; a warning is
        printed once when it is missing).
      resume_step: when resuming from a checkpoint at this step, rows written after it by
        the interrupted run are dropped first, so the file reads as one uninterrupted run
        (the rows kept are `kept_rows`).
    """

    def __init__(self, workdir: str | os.PathLike[str], *, enabled: bool = True,
                 tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.path = Path(workdir) / METRICS_FILE
        self.enabled = enabled
        self.kept_rows: list[dict[str, Any]] = []
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self.kept_rows = _rows_up_to(self.path, resume_step)
            write_jsonl(self.path, self.kept_rows)
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
        out = to_jsonable(dict(row))
        if not self.enabled:
            return out
        self._file.write(dumps(out) + "\n")
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


def _rows_up_to(path: Path, step: int) -> list[dict[str, Any]]:
    """The rows of an interrupted run's metrics file up to `step` (the resume step).

    A damaged line (not only a truncated last one) is dropped with a warning naming it;
    the file as it was is kept beside it as ``metrics.jsonl.damaged``.
    """
    if not path.exists():
        return []
    rows, bad = read_jsonl_lines(path)
    if bad:
        keep = path.with_name(path.name + ".damaged")
        shutil.copyfile(path, keep)
        print(f"lars_jax: {path}: line(s) {', '.join(map(str, bad))} not valid JSON rows; "
              f"dropped (the file as it was is kept in {keep})", file=sys.stderr, flush=True)
    return [r for r in rows if r.get("step", 0) <= step]


def mean_rows(rows: list[Mapping[str, Any]], mean_keys: tuple[str, ...]) -> dict[str, Any]:
    """Combines per-step metric dicts: the mean of `mean_keys`, the last value of the rest."""
    out = dict(rows[-1])
    for k in mean_keys:
        vals = [float(np.asarray(r[k])) for r in rows if k in r]
        if vals:
            out[k] = float(np.mean(vals))
    return out
