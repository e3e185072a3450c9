"""Shared machinery of the claim-testing experiments in ``experiments/``.

Each experiment script is thin: it defines its presets (a base
:class:`lars_jax.train.TrainConfig` and a list of runs), then calls the helpers here to
run them through :func:`lars_jax.runs.sweep.run_sweep` (resumable, one JSON row per run),
to read results back (final metrics, curves, per-layer diagnostics), to aggregate over
seeds, and to write ``report.md`` with :func:`lars_jax.runs.report.write_report`.

Every number a report shows is read from the run folders; verdict sentences are
computed from those numbers with thresholds the report states.

References:
  Goyal et al., "Accurate, Large Minibatch SGD", arXiv 1706.02677, 2017.
  Masters & Luschi, "Revisiting Small Batch Training for Deep Neural Networks",
  arXiv 1804.07612, 2018.
  McCandlish et al., "An Empirical Model of Large-Batch Training", arXiv 1812.06162, 2018.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lars_jax.runs.compile_cache import enable_compilation_cache
from lars_jax.runs.run_files import (
    ERROR,
    RUN_DONE,
    RUN_FAILED,
    STATUS,
    STATUS_NONFINITE,
    STATUS_OK,
    SUMMARY,
    TEST_ACCURACY,
    read_jsonl,
    write_json,
)

PathLike = str | os.PathLike[str]

PRESETS = ("smoke", "cpu", "full")
_REPO_ROOT = Path(__file__).resolve().parent.parent


class Method(NamedTuple):
    """One line of an experiment's plot: a label and the config fields that define it.

    Attributes:
      label: the legend label (e.g. ``"SGD, linear, warmup"``).
      overrides: config fields shared by every run of the method.
    """

    label: str
    overrides: Mapping[str, Any]


# ------------------------------------------------------------------ command line


def experiment_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The common command line of an experiment script.

    Options: ``--preset smoke|cpu|full`` (default ``cpu``), ``--out`` (default
    ``experiments/results/<name>`` for ``cpu``, ``experiments/results/<name>_full`` for
    ``full``, a ``smoke`` folder otherwise), ``--report-only`` (rebuild the report from
    the runs already in ``--out``).

    Args:
      name: the experiment's name (its results folder).
      description: the ``--help`` text.

    Returns:
      An :class:`argparse.ArgumentParser`.

    References:
      Python documentation, ``argparse``.
    """
    p = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=description)
    p.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="cpu: <20 min on 2 CPU cores; full: GPU budgets; smoke: seconds.")
    p.add_argument("--out", default=None, help="Results folder.")
    p.add_argument("--report-only", action="store_true",
                   help="Only rebuild report.md and plots from the runs in --out.")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="Start no new run after this many minutes (runs are in priority "
                        "order; run again to resume the rest). The report covers what ran.")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="Run only every N-th run starting at I (two processes can share "
                        "a sweep); the report covers every finished run.")
    return p


def default_out(name: str, preset: str) -> Path:
    """Default results folder of an experiment for a preset."""
    base = _REPO_ROOT / "experiments" / "results"
    if preset == "cpu":
        return base / name
    if preset == "full":
        return base / f"{name}_full"
    return base / "_smoke" / name


# ------------------------------------------------------------------ running


def run_points(
    base: Any,
    points: Sequence[Mapping[str, Any]],
    out_dir: PathLike,
    *,
    max_minutes: float | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Trains an explicit list of runs (resumable) and returns their result rows.

    Args:
      base: the base :class:`lars_jax.train.TrainConfig`.
      points: one ``{field: value}`` dict per run, in priority order.
      out_dir: the results folder (``results.jsonl`` and one folder per run).
      max_minutes: start no new run after this many minutes; the runs not started are
        left for the next invocation (the sweep resumes) and are missing from the result.
      log: progress printer (default: stdout with elapsed time).

    Returns:
      The rows of the finished (or failed) runs, in ``points`` order.

    References:
      :mod:`lars_jax.runs.sweep`.
    """
    from lars_jax.runs.sweep import plan_sweep, run_sweep

    t0 = time.perf_counter()
    if log is None:
        def log(msg: str) -> None:
            print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)
    pts = [dict(p) for p in points]
    if max_minutes is None:
        return run_sweep(base, pts, out_dir, log=log)
    plan_sweep(base, pts, out_dir)  # validate every run before any compute
    rows = []
    for i, p in enumerate(pts):
        if time.perf_counter() - t0 > 60 * max_minutes:
            log(f"time budget of {max_minutes:g} min spent: {len(pts) - i} runs not started")
            break
        rows += run_sweep(base, [p], out_dir, log=log)
    return rows


def load_rows(out_dir: PathLike) -> list[dict[str, Any]]:
    """The result rows already in a results folder (for ``--report-only``)."""
    from lars_jax.runs.report import load_results

    return load_results(out_dir)


def rows_for(points: Sequence[Mapping[str, Any]],
             rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose config matches one of ``points`` (in ``points`` order).

    Rows of runs that are no longer part of the experiment's grid are left out.
    """
    out = []
    for p in points:
        for r in rows:
            c = config_of(r)
            if all(_same(c.get(k), v) for k, v in p.items()):
                out.append(dict(r))
                break
    return out


def run_or_load(
    base: Any, points: Sequence[Mapping[str, Any]], out_dir: PathLike, *,
    report_only: bool = False, max_minutes: float | None = None, shard: str | None = None,
) -> list[dict[str, Any]]:
    """Runs the points (unless ``report_only``), then returns the rows of those that ran.

    ``shard="i/n"`` runs only the points ``i, i+n, i+2n, ...``; the returned rows cover
    every point that has a finished run, whichever process made it.
    """
    if not report_only:
        todo = list(points)
        if shard:
            try:
                i, n = (int(v) for v in shard.split("/"))
            except ValueError as e:
                raise ValueError(f"shard must look like 'i/n', got {shard!r}") from e
            if not 0 <= i < n:
                raise ValueError(f"shard {shard!r}: need 0 <= i < n")
            todo = todo[i::n]
        run_points(base, todo, out_dir, max_minutes=max_minutes)
    if not Path(out_dir).exists():
        return []
    return rows_for(points, load_rows(out_dir))



class ExperimentRun(NamedTuple):
    """What :func:`run_experiment` hands to an experiment's ``analyse``."""

    base: Any
    rows: list[dict[str, Any]]
    out: Path
    timer: Timer | None  # None with --report-only: the report claims no wall time


def run_experiment(
    name: str, args: argparse.Namespace, base_config: Callable[[str], Any],
    points: Callable[[str, Any], Sequence[Mapping[str, Any]]],
) -> ExperimentRun:
    """The common body of every experiment's ``main``: output folder, compilation cache,
    timer, base config, then :func:`run_or_load` of ``points(preset, base)``.

    ``args`` comes from :func:`experiment_parser` (possibly with extra options).
    """
    out = Path(args.out) if args.out else default_out(name, args.preset)
    out.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache()
    timer = Timer()
    base = base_config(args.preset)
    rows = run_or_load(base, points(args.preset, base), out / "runs",
                       report_only=args.report_only, max_minutes=args.max_minutes,
                       shard=args.shard)
    return ExperimentRun(base, rows, out, None if args.report_only else timer)


def expand(methods: Sequence[Method], **axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Run points: every method crossed with the product of ``axes``.

    Args:
      methods: the methods (their overrides are copied into each point).
      **axes: field -> values (e.g. ``batch_size=[32, 256]``, ``seed=[0, 1]``).

    Returns:
      One dict per run; axes fields override method fields of the same name.

    Example:
      >>> expand([Method("a", {"optimizer": "sgd"})], batch_size=[8, 16])
      [{'optimizer': 'sgd', 'batch_size': 8}, {'optimizer': 'sgd', 'batch_size': 16}]
    """
    import itertools

    keys = list(axes)
    points = []
    for m in methods:
        for combo in itertools.product(*(axes[k] for k in keys)):
            p = dict(m.overrides)
            p.update(zip(keys, combo, strict=True))
            points.append(p)
    return points


# ------------------------------------------------------------------ reading results


def config_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The full config dict of a result row (``config`` merged with ``varied``)."""
    cfg = dict(row.get("config") or {})
    cfg.update(row.get("varied") or {})
    return cfg


def method_of(row: Mapping[str, Any], methods: Sequence[Method]) -> str | None:
    """The label of the first method whose overrides all match the row's config."""
    cfg = config_of(row)
    for m in methods:
        if all(_same(cfg.get(k), v) for k, v in m.overrides.items()):
            return m.label
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def final_accuracy(row: Mapping[str, Any]) -> float:
    """Final test accuracy of a run; NaN for a failed or diverged run.

    Args:
      row: a result row (from :func:`run_points` or :func:`lars_jax.runs.report.load_results`).

    Returns:
      The accuracy in ``[0, 1]``, or NaN when the run failed or logged no accuracy.
    """
    if row.get(STATUS) != RUN_DONE:
        return math.nan
    summary = row.get(SUMMARY) or {}
    v = summary.get(TEST_ACCURACY)  # None for a run stopped on NaN/Inf (STATUS_NONFINITE)
    if summary.get(STATUS, STATUS_OK) != STATUS_OK or not isinstance(v, int | float) \
            or isinstance(v, bool):
        return math.nan
    return float(v) if math.isfinite(v) else math.nan


def outcome(row: Mapping[str, Any]) -> str:
    """``"ok"``, ``"diverged"`` (non-finite loss stopped the run), ``"failed"`` or
    ``"unfinished"`` (a run folder without a result: interrupted or still running)."""
    if row.get(STATUS) not in (RUN_DONE, RUN_FAILED):
        return "unfinished"
    if row.get(STATUS) == RUN_DONE:
        status = (row.get(SUMMARY) or {}).get(STATUS, STATUS_OK)
        return "diverged" if status == STATUS_NONFINITE else "ok"
    err = str(row.get(ERROR, "")).lower()
    return "diverged" if ("non-finite" in err or "nonfinite" in err) else "failed"


def run_dir(row: Mapping[str, Any], out_dir: PathLike) -> Path:
    """The folder of a run."""
    wd = Path(str(row.get("workdir", row.get("run", ""))))
    return wd if wd.is_absolute() else Path(out_dir) / wd


def read_metrics(row: Mapping[str, Any], out_dir: PathLike) -> list[dict[str, Any]]:
    """The metric rows of a run's ``metrics.jsonl`` (empty if it has none)."""
    path = run_dir(row, out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return read_jsonl(path)  # only a line cut by an interrupted run is tolerated


def curve(
    metrics: Sequence[Mapping[str, Any]], key: str, x: str = "epoch"
) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)`` of the metric rows that carry both ``x`` and ``key``."""
    pts = [
        (float(r[x]), float(r[key])) for r in metrics
        if isinstance(r.get(key), int | float) and isinstance(r.get(x), int | float)
    ]
    if not pts:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*pts, strict=True)
    return np.asarray(xs), np.asarray(ys)


def layer_series(
    metrics: Sequence[Mapping[str, Any]], quantity: str, x: str = "step"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-layer time series of one :func:`lars_jax.diagnostics.layer_diagnostics` quantity.

    Finds every metric key ending in ``"/" + quantity`` (whatever prefix the trainer
    adds) and returns ``layer name -> (xs, ys)``.

    Args:
      metrics: the metric rows of a run.
      quantity: e.g. ``"wd_shrink"``.
      x: the x key.

    Returns:
      Mapping from the layer path (the key without the suffix) to its series.
    """
    suffix = "/" + quantity
    layers: dict[str, list[tuple[float, float]]] = {}
    for r in metrics:
        xv = r.get(x)
        if not isinstance(xv, int | float):
            continue
        for k, v in r.items():
            if k.endswith(suffix) and isinstance(v, int | float):
                layers.setdefault(k[: -len(suffix)], []).append((float(xv), float(v)))
    out = {}
    for name, pts in layers.items():
        xs, ys = zip(*pts, strict=True)
        out[name] = (np.asarray(xs), np.asarray(ys))
    return dict(sorted(out.items()))


def mean_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min, max and count of the finite values.

    Example:
      >>> mean_spread([0.8, 0.9, float("nan")])["n"]
      2
    """
    v = np.asarray([x for x in values if isinstance(x, int | float) and math.isfinite(x)])
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def fmt_acc(x: float) -> str:
    """An accuracy as a percentage with one decimal, ``n/a`` for NaN (no finished run)."""
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def fmt_pm(stats: Mapping[str, float]) -> str:
    """``mean ± std (n=…)`` of accuracies in percent."""
    if not stats["n"]:
        return "no finished run"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}% (n={stats['n']})"


# ------------------------------------------------------------------ reporting


def environment_note() -> str:
    """One line naming the machine and software the runs used."""
    try:
        import jax

        devs = jax.devices()
        dev = f"{len(devs)} x {devs[0].platform} ({devs[0].device_kind})"
        jv = jax.__version__
    except Exception:  # pragma: no cover
        dev, jv = "unknown device", "?"
    return (
        f"{platform.node() or 'host'}: {os.cpu_count()} CPU cores, {dev}; "
        f"jax {jv}, python {platform.python_version()}"
    )


class Timer:
    """Wall-clock timer of an experiment (the report states the time taken)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def save_json(obj: Any, path: PathLike) -> Path:
    """Writes ``obj`` as indented JSON with `lars_jax.runs.run_files.write_json` (NaN and
    infinities as null, atomically) and returns the path."""
    write_json(path, obj)
    return Path(path)


def run_time_note(rows: Sequence[Mapping[str, Any]], timer: Timer | None = None) -> str:
    """A sentence with the number of runs, failures and the time they took."""
    done = sum(r.get("status") == "done" for r in rows)
    failed = sum(r.get("status") == "failed" for r in rows)
    train_s = sum(float(r.get("time_s") or 0.0) for r in rows)
    text = f"{len(rows)} runs ({done} finished, {failed} failed); training time {train_s:.0f} s"
    if timer is not None:
        text += f"; this invocation {timer.seconds:.0f} s wall clock"
    return text + "."


def base_config_table(base: Any, fields: Sequence[str]) -> str:
    """A two-column markdown table of selected base-config fields."""
    d = dataclasses.asdict(base) if dataclasses.is_dataclass(base) else dict(base)
    lines = ["| field | value |", "| :-- | :-- |"]
    for f in fields:
        lines.append(f"| {f} | {d.get(f)} |")
    return "\n".join(lines) + "\n"


def preset_note(preset: str) -> str:
    """What each preset means, for the limits section of a report."""
    if preset == "full":
        return "Preset `full` (GPU budgets)."
    if preset == "smoke":
        return (
            "Preset `smoke`: a few seconds of training to test the pipeline; the numbers "
            "say nothing about the claim."
        )
    return (
        "Preset `cpu`: small models (mostly an MLP with BatchNorm) and budgets of a few "
        "epochs on Fashion-MNIST, sized to run in under an hour on a 2-core CPU (each "
        "report gives its measured run time and the machine's load). The `full` preset "
        "(GPU, CIFAR-10 where available, real budgets) is defined in the script but was "
        "NOT run: no GPU was lent to this project's development sessions."
    )


def plot_styled(
    out: PathLike,
    lines: Sequence[Mapping[str, Any]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    hlines: Mapping[str, float] | None = None,
    legend_cols: int = 1,
) -> Path:
    """Draws lines with per-line styles (colour, line style, markers) and writes a PNG.

    For the plots :func:`lars_jax.runs.plotting.plot_lines` cannot style: measured points as
    dots against a black prediction line, or pairs of quantities of one layer in one
    colour (solid and dashed). Non-positive values are dropped on a log axis.

    Args:
      out: the PNG file.
      lines: dicts with ``x``, ``y``, ``label`` and optional matplotlib style keys
        ``color``, ``ls``, ``marker``, ``lw``, ``ms``, ``alpha``.
      xlabel: x axis label.
      ylabel: y axis label.
      title: axes title.
      logx: log-scale x axis.
      logy: log-scale y axis.
      hlines: label -> y of grey dashed reference lines.
      legend_cols: columns of the legend.

    Returns:
      The path written.

    References:
      Hunter, "Matplotlib: A 2D graphics environment", 2007.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for ln in lines:
        x = np.asarray(ln["x"], float)
        y = np.asarray(ln["y"], float)
        keep = np.isfinite(x) & np.isfinite(y)
        if logy:
            keep &= y > 0
        if logx:
            keep &= x > 0
        style = {k: ln[k] for k in ("color", "ls", "marker", "lw", "ms", "alpha") if k in ln}
        style.setdefault("lw", 1.3)
        ax.plot(x[keep], y[keep], label=ln.get("label"), **style)
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="gray", ls="--", lw=1)
        ax.annotate(label, xy=(0.01, y), xycoords=("axes fraction", "data"), fontsize=8,
                    color="dimgray", va="bottom")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    if any(ln.get("label") for ln in lines):
        ax.legend(fontsize=7, ncol=legend_cols)
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    return p


# ------------------------------------------------------------------ adaptive sweeps


def _claim(path: Path, grace_s: float = 30.0) -> bool:
    """Atomically claims a run for this process: creates ``path`` holding the pid.

    An existing claim whose process no longer exists is taken over (a crashed worker's
    run is redone); a claim file too young to hold its pid yet is respected.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
            except (ValueError, IndexError):
                if time.time() - path.stat().st_mtime < grace_s:
                    return False
                path.unlink(missing_ok=True)
                continue
            except FileNotFoundError:
                continue
            try:
                os.kill(pid, 0)
                return False  # the claiming process is alive
            except ProcessLookupError:
                path.unlink(missing_ok=True)
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True
    return False


def finished(row: Mapping[str, Any] | None) -> bool:
    """Whether a results row is a finished run (done or failed, not one in progress)."""
    return row is not None and row.get("status") in ("done", "failed")


def run_adaptive(
    base: Any, plan: Callable[[list[dict[str, Any]]], Sequence[Mapping[str, Any]]],
    out_dir: PathLike, *, max_minutes: float | None = None,
) -> list[dict[str, Any]]:
    """Runs the points ``plan(rows)`` asks for until it asks for nothing new.

    ``plan`` sees the finished rows so far and returns every point the experiment needs
    now (e.g. a learning-rate grid, then a 2x extension where the best lr sits on an edge,
    then more seeds at the best lr): the sweep adapts to its results and stays resumable.
    Several processes may share one ``out_dir``: each run is claimed by a file under
    ``out_dir/.claims`` before it starts, so no run is trained twice. A process returns
    when every point is finished or claimed by another live process (run it again, or
    after the others end, to pick up points their results add).

    Args:
      base: the base config.
      plan: finished rows -> the points wanted now (priority order).
      out_dir: the sweep folder.
      max_minutes: start no new run after this many minutes.

    Returns:
      The finished rows of the points the plan asks for at the end.
    """
    from lars_jax.runs.sweep import run_name

    t0 = time.perf_counter()
    out = Path(out_dir)

    def current() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rows = [r for r in (load_rows(out) if out.exists() else []) if finished(r)]
        return rows, [dict(p) for p in plan(rows)]

    while True:
        rows, pts = current()
        todo = [p for p in pts if not rows_for([p], rows)]
        if not todo:
            break
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            print(f"time budget of {max_minutes:g} min spent: {len(todo)} runs left", flush=True)
            break
        mine = next((p for p in todo if _claim(out / ".claims" / run_name(p))), None)
        if mine is None:
            print(f"{len(todo)} runs left, all claimed by other processes", flush=True)
            break
        run_points(base, [mine], out)
    rows, pts = current()
    return rows_for(pts, rows)


def steps_to_target(metrics: Sequence[Mapping[str, Any]], key: str, target: float, *,
                    below: bool = True, transform: Callable[[float], float] | None = None
                    ) -> int | None:
    """The first logged step at which ``key`` reaches ``target`` (None if never).

    Args:
      metrics: the metric rows of a run (:func:`read_metrics`).
      key: the metric, e.g. ``"test_accuracy"``.
      target: the value to reach.
      below: reached when the (transformed) value is ``<= target``; else ``>= target``.
      transform: applied to the value first (e.g. ``lambda a: 1 - a`` for the error).

    Returns:
      The step, or None when the run never reached the target.

    References:
      Shallue et al., "Measuring the Effects of Data Parallelism on Neural Network
      Training", JMLR 20, 2019 (steps to result).
    """
    xs, ys = curve(metrics, key, x="step")
    for s, y in zip(xs, ys, strict=True):
        v = transform(float(y)) if transform else float(y)
        if math.isfinite(v) and (v <= target if below else v >= target):
            return int(s)
    return None
