"""Grids of training runs, run one after another, resumable, one results row per run.

``run_sweep(base_config, grid, out_dir)`` expands ``grid`` (field -> list of values)
into the cartesian product of configs, gives each run its own folder
``<out_dir>/<name>`` named from its varied values (``batch_size=1024__optimizer=lars``),
and trains the runs in grid order. Each finished run appends one JSON row to
``<out_dir>/results.jsonl``::

    {"run": ..., "workdir": ..., "status": "done" | "failed", "varied": {...},
     "config": {...}, "summary": {...}, "error": ..., "environmental": true (only
     for a failure of the storage), "time_s": ..., "finished_at": ...}

Running the same sweep again is how it resumes:

* a run with a ``done`` row (or a ``summary.json`` in its folder) is skipped;
* a run with a ``failed`` row (e.g. it diverged and the trainer stopped it) is
  skipped too unless ``retry_failed=True``: a failure is a result; but a run that
  failed for an environmental reason (disk full, quota, read-only file system: the row
  has ``"environmental": true``) is run again, resuming from its last checkpoint;
* any other run is (re)started; an interrupted one resumes from the last checkpoint
  in its folder, through the trainer's own ``resume``.

A finished run whose recorded config differs from the one the sweep now asks for
(the base config changed) is an error, so results from different settings are never
mixed in one folder.

References:
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
  arXiv 1706.02677 (batch size x learning-rate rule x warmup grids).
  Shallue et al., "Measuring the Effects of Data Parallelism on Neural Network
  Training", JMLR 20, 2019 (sweeps over batch size, one tuned run per point).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lars_jax.runs.config_io import coerce, field_name
from lars_jax.runs.errors import ConfigError, StorageError, WorkdirLockedError
from lars_jax.runs.run_files import (
    CONFIG,
    ENVIRONMENTAL,
    ERROR,
    RESULTS_FILE,
    RUN,
    RUN_DONE,
    RUN_FAILED,
    STATUS,
    STATUS_OK,
    SUMMARY,
    SUMMARY_FILE,
    SWEEP_FILE,
    VARIED,
    WORKDIR,
    append_jsonl,
    is_primary_process,
    read_json,
    read_jsonl_skipping,
    write_json,
)
from lars_jax.runs.storage import storage_problem
from lars_jax.train.config import TrainConfig, field_meta

PathLike = str | os.PathLike[str]
TrainFn = Callable[[Any], Mapping[str, Any]]
# A grid: field -> values (cartesian product), or an explicit list of points.
Grid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]

_MAX_NAME = 120


class PlannedRun(NamedTuple):
    """One point of a sweep.

    Attributes:
      name: the run's folder name under the sweep's output folder.
      varied: the swept fields and their values for this run.
      config: the run's full config (``workdir`` set to the run's folder).
      status: ``done``, ``failed``, ``partial`` (folder exists, no result) or ``pending``.
    """

    name: str
    varied: dict[str, Any]
    config: Any
    status: str


def expand_grid(grid: Grid) -> list[dict[str, Any]]:
    """The points of a grid: a cartesian product, or an explicit list of points.

    Args:
      grid: field -> non-empty list of values (the product, the last key varying
        fastest; an empty mapping is one run), or a list of ``{field: value}`` dicts
        run as given (for points that are not a product, e.g. each optimizer with
        its own learning rate).

    Returns:
      One ``{field: value}`` dict per run.

    Raises:
      ConfigError (a ValueError): a value list is empty, is a string, or repeats a value; or a
        point is repeated.

    Example:
      >>> expand_grid({"batch_size": [128, 1024], "optimizer": ["sgd", "lars"]})
      ... # doctest: +NORMALIZE_WHITESPACE
      [{'batch_size': 128, 'optimizer': 'sgd'}, {'batch_size': 128, 'optimizer': 'lars'},
       {'batch_size': 1024, 'optimizer': 'sgd'}, {'batch_size': 1024, 'optimizer': 'lars'}]
      >>> expand_grid([{"optimizer": "sgd", "learning_rate": 0.1}, {"optimizer": "lars"}])
      [{'optimizer': 'sgd', 'learning_rate': 0.1}, {'optimizer': 'lars'}]
    """
    if not isinstance(grid, Mapping):
        if isinstance(grid, str | bytes) or not isinstance(grid, Sequence):
            raise ConfigError(f"grid: expected a mapping or a list of points, got {grid!r}")
        points = []
        for i, point in enumerate(grid):
            if not isinstance(point, Mapping):
                raise ConfigError(f"grid[{i}]: a point must be a dict of field values")
            points.append(dict(point))
        seen = [json.dumps(p, sort_keys=True, default=str) for p in points]
        dup = next((p for p in seen if seen.count(p) > 1), None)
        if dup is not None:
            raise ConfigError(f"grid: repeated point {dup}")
        return points
    keys = list(grid)
    for k in keys:
        values = grid[k]
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise ConfigError(f"grid[{k!r}]: must be a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"grid[{k!r}]: needs at least one value")
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"grid[{k!r}]: repeated value in {list(values)!r}")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _format(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, float):
        text = f"{value:g}" if math.isfinite(value) else str(value)
    elif isinstance(value, list | tuple):
        text = "-".join(_format(v) for v in value)
    else:
        text = str(getattr(value, "value", value))
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)


def run_name(varied: Mapping[str, Any]) -> str:
    """A folder name for a run from its varied values.

    ``key=value`` pairs in grid order joined by ``__``; characters other than
    letters, digits and ``._+-`` in values become ``-``. Names longer than 120
    characters are cut and end with a hash of the full name, so they stay unique.

    Args:
      varied: field -> value of the swept fields.

    Returns:
      The name (``"base"`` for an empty grid).

    Example:
      >>> run_name({"batch_size": 1024, "optimizer": "lars", "warmup_epochs": 2.0})
      'batch_size=1024__optimizer=lars__warmup_epochs=2'
    """
    if not varied:
        return "base"
    name = "__".join(f"{k}={_format(v)}" for k, v in varied.items())
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name[: _MAX_NAME - 11] + "_" + digest
    return name


def normalize_grid(config_cls: type, grid: Grid) -> dict[str, list[Any]] | list[dict[str, Any]]:
    """Checks a grid's fields against the config and converts values to the field types.

    Args:
      config_cls: the config dataclass.
      grid: field -> values (values may be strings, as typed on a command line), or a
        list of points (see :func:`expand_grid`).

    Returns:
      The same grid with field names checked (``-`` read as ``_``) and typed values.

    Raises:
      ConfigError (a ValueError): an unknown field, a location field (``workdir``), a value of the
        wrong type (the message names the field), or a bad grid shape.
    """
    if config_cls is not TrainConfig:
        raise TypeError(f"config_cls: {config_cls!r} is not TrainConfig")

    def field(key: str) -> str:
        name = field_name(key)
        if name in _location_fields():
            raise ConfigError(f"grid[{key!r}]: the sweep sets each run's {name} itself")
        return name

    def typed(name: str, value: Any) -> Any:
        return coerce(field_meta()[name], value)

    if not isinstance(grid, Mapping):
        points = expand_grid(grid)  # checks the shape
        out_points = [{field(k): typed(field(k), v) for k, v in p.items()} for p in points]
        expand_grid(out_points)  # repeated points after typing
        return out_points
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        name = field(key)
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise ConfigError(f"grid[{key!r}]: must be a list of values, got {values!r}")
        out[name] = [typed(name, v) for v in values]
    expand_grid(out)  # checks empty and repeated values
    return out


def _location_fields() -> tuple[str, ...]:
    """The config fields that name where a run writes, not what it computes."""
    from lars_jax.train.config import fields_of_kind

    return fields_of_kind("location")


def _comparable(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config_dict.items() if k not in _location_fields()}


def _default_fields(cls: type) -> dict[str, Any]:
    """The config class's default values (empty if it has required fields)."""
    try:
        return _comparable(_config_dict(cls()))
    except TypeError:
        return {}


def _config_dict(config: Any) -> dict[str, Any]:
    to_dict = getattr(config, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dataclasses.asdict(config)


def _read_rows(out: Path) -> dict[str, dict[str, Any]]:
    path = out / RESULTS_FILE
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for row in read_jsonl_skipping(path):
            if RUN in row:
                rows[str(row[RUN])] = row  # the last row of a run wins
    return rows


def _summary_ok(path: Path) -> bool:
    """Whether a run's summary.json records a finished run (not e.g. a non-finite stop; a
    damaged summary.json is named and the run counts as unfinished: the trainer writes it
    again from the run's last checkpoint)."""
    try:
        summary = read_json(path)
    except ValueError as e:
        print(f"lars_jax sweep: {e}; the run is resumed to write it again", file=sys.stderr)
        return False
    return isinstance(summary, dict) and summary.get(STATUS, STATUS_OK) == STATUS_OK


def _summary_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary as stored in a results row (the config is stored once, beside it)."""
    return {k: v for k, v in summary.items() if k != CONFIG}


def _base_config(base_config: Any) -> Any:
    if dataclasses.is_dataclass(base_config) and not isinstance(base_config, type):
        return base_config
    if isinstance(base_config, Mapping):
        from lars_jax.train import TrainConfig

        return TrainConfig.from_dict(dict(base_config))
    raise TypeError(f"base_config: expected a config dataclass or a dict, got {base_config!r}")


def plan_sweep(
    base_config: Any,
    grid: Grid,
    out_dir: PathLike,
) -> list[PlannedRun]:
    """Expands a sweep and reports each run's status without running anything.

    Every run's config is validated here, so a bad value fails before any compute.

    Args:
      base_config: the config every run starts from (a dataclass such as
        :class:`lars_jax.train.TrainConfig`, or a dict of its fields).
      grid: field -> list of values, or a list of points (see :func:`expand_grid`).
      out_dir: the sweep's output folder.

    Returns:
      One :class:`PlannedRun` per grid point, in grid order.

    Raises:
      ConfigError (a ValueError): a bad grid, an invalid run config (message names the run and the
        field), two grid points with the same folder name, or a finished run whose
        recorded config differs from the one planned now.
    """
    base = _base_config(base_config)
    cls = type(base)
    grid = normalize_grid(cls, grid)
    out = Path(out_dir)
    rows = _read_rows(out)
    # a field added to the config class since a run was recorded is taken to have had its
    # default value (so a new option does not orphan finished sweeps)
    defaults = _default_fields(cls)
    planned: list[PlannedRun] = []
    names: set[str] = set()
    for varied in expand_grid(grid):
        name = run_name(varied)
        if name in names:
            raise ConfigError(f"grid: two runs would share the folder name {name!r}")
        names.add(name)
        workdir = out / name
        config = dataclasses.replace(base, **varied, workdir=str(workdir))
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"sweep run {name}: {e}") from e
        row = rows.get(name)
        if row is not None and row.get(STATUS) in (RUN_DONE, RUN_FAILED):
            recorded = _comparable(row.get(CONFIG) or {})
            wanted = _comparable(_config_dict(config))
            diff = sorted(
                k for k in wanted.keys() | recorded.keys()
                if wanted.get(k) != recorded.get(k, defaults.get(k))
            )
            if recorded and diff:
                raise ConfigError(
                    f"sweep run {name}: {out / RESULTS_FILE} records it with a different config "
                    f"(fields {', '.join(diff)}); use another output folder or remove the run"
                )
            status = row[STATUS]
        elif (workdir / SUMMARY_FILE).exists():
            status = RUN_DONE if _summary_ok(workdir / SUMMARY_FILE) else "partial"
        elif workdir.exists():
            status = "partial"
        else:
            status = "pending"
        planned.append(PlannedRun(name, dict(varied), config, status))
    return planned


def run_sweep(
    base_config: Any,
    grid: Grid,
    out_dir: PathLike,
    *,
    train_fn: TrainFn | None = None,
    retry_failed: bool = False,
    stop_on_error: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Runs every config of a grid one after another; resumable.

    Args:
      base_config: the config every run starts from (a dataclass such as
        :class:`lars_jax.train.TrainConfig`, or a dict of its fields); its
        ``workdir`` is replaced by each run's folder.
      grid: field -> list of values (the runs are the cartesian product, the last
        field varying fastest), or an explicit list of ``{field: value}`` points.
      out_dir: the sweep's folder: ``results.jsonl``, ``sweep.json`` and one
        subfolder per run.
      train_fn: ``config -> summary dict``; default :func:`lars_jax.train.train`.
      retry_failed: rerun runs recorded as failed (default: a failure is a result).
      stop_on_error: re-raise a run's exception instead of recording it and going
        on with the next run.
      log: called with one line per run (default: print to stderr).

    Returns:
      One results row per grid point, in grid order (rows of runs finished in an
      earlier invocation included).

    Raises:
      ConfigError (a ValueError): see :func:`plan_sweep`; raised before any run starts.
      KeyboardInterrupt: passed through; run the sweep again to resume.
    """
    base = _base_config(base_config)
    out = Path(out_dir)
    planned = plan_sweep(base, grid, out)
    if train_fn is None:
        from lars_jax.train import train as train_fn
    primary = is_primary_process()
    if log is None:
        log = lambda msg: print(msg, file=sys.stderr, flush=True) if primary else None
    out.mkdir(parents=True, exist_ok=True)
    grid = normalize_grid(type(base), grid)
    if primary:
        write_json(out / SWEEP_FILE, {"base": _comparable(_config_dict(base)), "grid": grid})
    rows = _read_rows(out)
    results: list[dict[str, Any]] = []
    for i, run in enumerate(planned):
        tag = f"[{i + 1}/{len(planned)}] {run.name}"
        row = rows.get(run.name)
        if run.status == RUN_DONE and row is not None and row.get(STATUS) == RUN_DONE:
            log(f"{tag}: done, skipped")
            results.append(row)
            continue
        if (run.status == RUN_FAILED and not retry_failed and row is not None
                and not row.get(ENVIRONMENTAL)):
            log(f"{tag}: failed earlier ({row.get('error', '?')}), skipped")
            results.append(row)
            continue
        row = {
            RUN: run.name,
            WORKDIR: run.name,
            STATUS: RUN_DONE,
            VARIED: run.varied,
            CONFIG: _config_dict(run.config),
            SUMMARY: {},
        }
        summary_path = Path(run.config.workdir) / SUMMARY_FILE
        if run.status == RUN_DONE and summary_path.exists():
            # Finished, but the process died before the results row was written.
            row[SUMMARY] = _summary_row(read_json(summary_path))
            log(f"{tag}: done (summary.json found), recorded")
        else:
            verb = "resuming" if run.status in ("partial", RUN_FAILED) else "starting"
            log(f"{tag}: {verb}")
            t0 = time.perf_counter()
            try:
                row[SUMMARY] = _summary_row(train_fn(run.config))
            except WorkdirLockedError as e:  # another process runs it: no result to
                log(f"{tag}: busy, skipped ({e})")  # record, not a failure
                continue
            except Exception as e:
                if stop_on_error:
                    raise
                row[STATUS] = RUN_FAILED
                row[ERROR] = f"{type(e).__name__}: {e}"
                if isinstance(e, StorageError) or storage_problem(e) is not None:
                    row[ENVIRONMENTAL] = True  # nothing wrong with the run: rerun it
                log(f"{tag}: failed: {row[ERROR]}")
            row["time_s"] = round(time.perf_counter() - t0, 3)
        row["finished_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        if primary:
            try:
                append_jsonl(out / RESULTS_FILE, row, sync=True)
            except OSError as e:
                why = storage_problem(e)
                if why is None:
                    raise
                raise StorageError(
                    f"cannot write {out / RESULTS_FILE}: {why} ({e}); free space there (or "
                    "make it writable), then run the same sweep again") from e
        results.append(row)
    failed = sum(r.get(STATUS) == RUN_FAILED for r in results)
    log(f"sweep {out}: {len(results) - failed} done, {failed} failed")
    return results


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``lars-jax sweep`` to the CLI's `commands` with its options; the CLI adds
    train's config flags (its base config)."""
    parser = commands.add_parser(
        "sweep", allow_abbrev=False, help="run a grid of configs one after another "
        "(resumable)", description="Run the cartesian product of --grid values one after "
        "another, each in <out>/<name> named from its values; one row per run in "
        "<out>/results.jsonl. Run the same command again to resume: finished runs are "
        "skipped, an interrupted run resumes from its last checkpoint. Flags set the base "
        "config (overriding --config).")
    parser.add_argument("--config", "--base", dest="config", metavar="FILE",
                        help="TOML/JSON base config; may hold a [sweep] table with `out` and a "
                        "[sweep.grid] table")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="values of one field to sweep (repeatable; a JSON list also "
                        "works: FIELD='[1, 2]'); overrides the same field of the file's grid")
    parser.add_argument("--out", metavar="DIR", help="output folder (or `out` in [sweep])")
    for flag, text in (("--retry-failed", "rerun runs recorded as failed"),
                       ("--stop-on-error", "stop the sweep at the first failed run"),
                       ("--dry-run", "list the runs and their status, run nothing"),
                       ("--no-report", "do not write <out>/report.md at the end")):
        parser.add_argument(flag, action="store_true", help=text)
    return parser


def _grid_and_out(args: argparse.Namespace, table: Mapping[str, Any],
                  flags: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The grid (``--grid FIELD=V1,V2`` or ``FIELD=[JSON list]`` over the file's
    ``[sweep.grid]``; values typed by `normalize_grid`) and the output folder."""
    grid = table.get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError("[sweep.grid] must be a table of FIELD = [values]")
    unknown = sorted(set(table) - {"grid", "out"})
    if unknown:
        raise ConfigError(f"[sweep] has unknown key(s) {', '.join(unknown)} (known: out, grid)")
    grid = {field_name(k): v for k, v in grid.items()}
    for item in args.grid:
        key, eq, text = (s.strip() for s in item.partition("="))
        if not eq or not key or not text:
            raise ConfigError(f"--grid {item!r}: expected FIELD=V1,V2,...")
        try:  # text starting with "[" parses to a list or fails
            values = json.loads(text) if text.startswith("[") else text.split(",")
        except json.JSONDecodeError as e:
            raise ConfigError(f"--grid {item!r}: not a JSON list: {e}") from e
        grid[field_name(key)] = [v.strip() if isinstance(v, str) else v for v in values]
    both = sorted(set(grid) & set(flags))
    if both:
        raise ConfigError(f"{', '.join(both)}: both swept (--grid) and set by a flag")
    if not (args.out or table.get("out")):
        raise ConfigError("--out: the sweep needs an output folder (--out DIR or out in [sweep])")
    return grid, args.out or table["out"]


def run_command(args: argparse.Namespace, base: TrainConfig, table: Mapping[str, Any],
                flags: Mapping[str, Any], *, load_train: Callable[[], TrainFn]) -> int:
    """``lars-jax sweep``: `base` from the config file and flags, `table` the file's
    ``[sweep]`` table, `flags` the config fields set by flags, `load_train` returns the train
    function (imported once runs start). Every run's config is checked against its devices
    before the first run starts. Returns the exit status: 0, or 1 when a run failed."""
    from lars_jax.runs.compile_cache import enable_compilation_cache
    from lars_jax.runs.report import summary_report
    from lars_jax.train.loop import run_device_count

    grid, out = _grid_and_out(args, table, flags)
    planned = plan_sweep(base, grid, out)  # validates every run's config (not the base's)
    if args.dry_run:
        for run in planned:
            print(f"{run.status:8s} {run.name}")
        print(f"{len(planned)} runs in {out}")
        return 0
    for run in planned:
        run.config.validate(device_count=run_device_count(run.config))
    enable_compilation_cache()  # runs that differ only in lr or wd compile once
    rows = run_sweep(base, grid, out, train_fn=load_train(), retry_failed=args.retry_failed,
                     stop_on_error=args.stop_on_error)
    if not args.no_report and is_primary_process():
        print(f"lars-jax sweep: report written to {summary_report(out)}")
    failed = [r[RUN] for r in rows if r.get(STATUS) == RUN_FAILED]
    if failed:
        rerun = ("; those that failed for their storage (disk full, read-only) are run "
                 "again by the same command" if any(r.get(ENVIRONMENTAL) for r in rows) else "")
        print(f"lars-jax sweep: {len(failed)} of {len(rows)} runs failed ({', '.join(failed)}); "
              f"they are recorded in results.jsonl; --retry-failed reruns them{rerun}",
              file=sys.stderr)
        return 1
    return 0
