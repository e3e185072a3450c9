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

PRESETS = ("smoke", "cpu")  # no v3 script defines a GPU preset
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

    Options: ``--preset smoke|cpu`` (default ``cpu``), ``--out`` (default
    ``experiments/results/<name>`` for ``cpu``, a ``smoke`` folder otherwise),
    ``--report-only`` (rebuild the report from
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
                   help="cpu: about an hour on 2 CPU cores; smoke: seconds.")
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
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "cpu":
        return base / name
    return base / "_smoke" / name


# ------------------------------------------------------------------ running


def run_points(
    base: Any,
    points: Sequence[Mapping[str, Any]],
    out_dir: PathLike,
    *,
    max_minutes: float | None = None,
    log: Callable[[str], None] | None = None,
    train_fn: Callable[[Any], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Trains an explicit list of runs (resumable) and returns their result rows.

    Args:
      base: the base :class:`lars_jax.train.TrainConfig`.
      points: one ``{field: value}`` dict per run, in priority order.
      out_dir: the results folder (``results.jsonl`` and one folder per run).
      max_minutes: start no new run after this many minutes; the runs not started are
        left for the next invocation (the sweep resumes) and are missing from the result.
      log: progress printer (default: stdout with elapsed time).
      train_fn: ``config -> summary`` (default :func:`lars_jax.train.train`), e.g.
        :func:`train_until`.

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
        return run_sweep(base, pts, out_dir, log=log, train_fn=train_fn)
    plan_sweep(base, pts, out_dir)  # validate every run before any compute
    rows = []
    for i, p in enumerate(pts):
        if time.perf_counter() - t0 > 60 * max_minutes:
            log(f"time budget of {max_minutes:g} min spent: {len(pts) - i} runs not started")
            break
        rows += run_sweep(base, [p], out_dir, log=log, train_fn=train_fn)
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


def experiment_main(name: str, doc: str | None, base_config: Callable[[str], Any],
                    registered: Callable[[str, Any], Registered],
                    analyse: Callable[[str, ExperimentRun], dict],
                    argv: Sequence[str] | None = None) -> dict:
    """Every registered experiment's ``main``: its command line (:func:`experiment_parser`,
    described by the first line of the script's docstring ``doc``), the runs
    (:func:`run_experiment`), then ``analyse(preset, run)``, whose summary it returns."""
    args = experiment_parser(name, (doc or name).splitlines()[0]).parse_args(argv)
    return analyse(args.preset, run_experiment(name, args, base_config, registered=registered))


def run_experiment(
    name: str, args: argparse.Namespace, base_config: Callable[[str], Any],
    points: Callable[[str, Any], Sequence[Mapping[str, Any]]] | None = None, *,
    registered: Callable[[str, Any], Registered] | None = None,
) -> ExperimentRun:
    """The common body of every experiment's ``main``: output folder, compilation cache,
    timer, base config, then the runs.

    Either ``points(preset, base)`` (a fixed list of runs through :func:`run_or_load`; the
    rows are the sweep's) or ``registered(preset, base)`` (issue 23's rules: the criterion
    is written to ``criterion.json`` before any run, or checked against the one there, and
    refused if it changed; runs follow the adaptive plan; the rows returned are those of
    ``rows.jsonl``, all of the registered criterion).

    ``args`` comes from :func:`experiment_parser` (possibly with extra options).
    """
    if (points is None) == (registered is None):
        raise ValueError("run_experiment needs exactly one of points= and registered=")
    out = Path(args.out) if args.out else default_out(name, args.preset)
    out.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache()
    timer = Timer()
    base = base_config(args.preset)
    if registered is not None:
        reg = registered(args.preset, base)
        crit = (read_criterion(out) if args.report_only else preregister(out, reg.spec))
        if crit["criterion_sha"] != reg.spec["criterion_sha"]:
            raise CriterionMismatch(
                f"{out / 'criterion.json'}: criterion_sha {crit['criterion_sha'][:12]} is not "
                f"the script's {reg.spec['criterion_sha'][:12]}: refusing to score its rows")
        if not args.report_only:
            if args.shard:
                raise ValueError("--shard: run several workers on one folder instead "
                                 "(registered runs are claimed one at a time)")
            _run_registered(base, reg, out, crit["criterion_sha"], args.max_minutes)
        rows = load_registered_rows(out, crit["criterion_sha"])
        return ExperimentRun(base, rows, out, None if args.report_only else timer)
    rows = run_or_load(base, points(args.preset, base), out / "runs",
                       report_only=args.report_only, max_minutes=args.max_minutes,
                       shard=args.shard)
    return ExperimentRun(base, rows, out, None if args.report_only else timer)


def registered_note(out: PathLike, rows: Sequence[Mapping[str, Any]]) -> str:
    """The report's pre-registration line: sha, when it was fixed, first run, row counts."""
    crit = read_criterion(out)
    ends = sorted(str(r["finished_at"]) for r in rows if r.get("finished_at"))
    n_sc = sum(bool(r.get("scored")) for r in rows)
    why: dict[str, int] = {}
    for r in rows:
        if not r.get("scored"):
            k = str(r.get("why_not")).split(":")[0]
            why[k] = why.get(k, 0) + 1
    return (f"Criterion fixed at **{crit['fixed_at']}** (`criterion.json`, criterion_sha "
            f"`{crit['criterion_sha'][:16]}`), before the first run; runs finished "
            f"{ends[0] if ends else '-'} to {ends[-1] if ends else '-'}. {len(rows)} rows, "
            f"all of this sha; {n_sc} scored"
            + (", not scored: " + ", ".join(f"{v} {k}" for k, v in sorted(why.items()))
               if why else "") + ".")


def compute_note(rows: Sequence[Mapping[str, Any]], out: PathLike) -> str:
    """Measured compute: summed wall and process CPU time of the runs, the span of the
    runs, the load average around them, the CPU, and the per-worker ``time_v_*.txt`` files
    if present (`time_v_note`)."""
    import datetime as dt
    import subprocess

    wall = sum(float(r.get("wall_s") or 0) for r in rows)
    cpu = sum(float(r.get("cpu_s") or 0) for r in rows)
    loads = [x for r in rows for x in (r.get("load_avg") or [])]
    ends = [(dt.datetime.fromisoformat(str(r["finished_at"])), float(r.get("wall_s") or 0))
            for r in rows if r.get("finished_at")]
    span = ""
    if ends:
        start = min(e - dt.timedelta(seconds=t) for e, t in ends)
        stop = max(e for e, _ in ends)
        span = (f" They span {(stop - start).total_seconds() / 60:.0f} min of wall time "
                f"({start:%Y-%m-%d %H:%M}-{stop:%H:%M} UTC).")
    try:
        cpu_model = next(ln.split(":", 1)[1].strip() for ln in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
            if ln.startswith("Model name"))
    except StopIteration:
        cpu_model = "unknown CPU"
    return (f"{len(rows)} runs: {wall / 60:.1f} min of summed run wall time, "
            f"{cpu / 60:.1f} min of process CPU time (the trainer's threads on {os.cpu_count()} "
            f"cores).{span} Load average (1 min) at run starts and ends: "
            + (f"{min(loads):.1f} to {max(loads):.1f}, median {float(np.median(loads)):.1f}"
               if loads else "not recorded")
            + f". Machine: {cpu_model}; {environment_note()}; shared with other developers' "
            "work, so wall times are indicative only." + time_v_note(out))


def time_v_note(out: PathLike) -> str:
    """Wall and CPU time of every worker process from the ``time_v*.txt`` files of
    ``/usr/bin/time -v`` in ``out``.

    A file may hold several invocations (a worker restarted with ``/usr/bin/time -v -a
    -o``, which appends a block per invocation): every block is read, and each file's
    invocations are summed, then all files together.

    Example:
      A file with two blocks of 1:00.00 and 0:30.00 wall and 20 + 10 s of CPU gives
      ``worker1: 2 invocations, 1.5 min wall, 0.5 min CPU``.
    """
    def seconds(clock: str) -> float:
        total = 0.0
        for part in clock.split(":"):
            total = 60 * total + float(part)
        return total

    parts, wall_all, cpu_all, n_all = [], 0.0, 0.0, 0
    for p in sorted(Path(out).glob("time_v*.txt")):
        blocks = [b for b in p.read_text().split("Command being timed")[1:]
                  if "User time (seconds)" in b]
        wall = cpu = 0.0
        for b in blocks:
            f = {}
            for ln in b.splitlines():
                if ": " in ln:
                    k, v = ln.strip().rsplit(": ", 1)
                    f[k] = v
            cpu += float(f["User time (seconds)"]) + float(f.get("System time (seconds)", 0))
            wall += seconds(f.get("Elapsed (wall clock) time (h:mm:ss or m:ss)", "0"))
        if blocks:
            parts.append(f"{p.stem.removeprefix('time_v_')}: "
                         + (f"{len(blocks)} invocations, " if len(blocks) > 1 else "")
                         + f"{wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU")
            wall_all, cpu_all, n_all = wall_all + wall, cpu_all + cpu, n_all + len(blocks)
    if not parts:
        return ""
    return (" `/usr/bin/time -v` per worker process (files `time_v_*.txt`, every invocation "
            "in them): " + "; ".join(parts)
            + (f"; all {n_all} invocations: {wall_all / 60:.1f} min of summed wall time, "
               f"{cpu_all / 60:.1f} min CPU" if len(parts) > 1 or n_all > 1 else "") + ".")


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
    if preset == "smoke":
        return (
            "Preset `smoke`: a few seconds of training to test the pipeline; the numbers "
            "say nothing about the claim."
        )
    return (
        "Preset `cpu`: small models (mostly an MLP with BatchNorm, some ResNet-8 arms of "
        "reduced width) and budgets of a few epochs on Fashion-MNIST, sized to run in about "
        "an hour on a 2-core CPU (each report gives its measured run time and the machine's "
        "load). No GPU preset is defined: no run here says what happens at ImageNet or "
        "CIFAR scale."
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


# ------------------------------------------------------------------ pre-registration (v3)
#
# Issue 23's rules, enforced here rather than promised in prose: a script fixes its
# criterion in ``results/<name>/criterion.json`` before its first run; every row it
# records carries that criterion's sha and the fields that say whether the row may be
# scored; analysis refuses rows of another criterion.

MIN_SCORED_STEPS = 200  # rule 1: a scored run takes at least this many optimizer steps
MIN_BN_EXAMPLES = 4  # rule 5: BatchNorm over fewer examples is shown, never scored
MIN_EVAL_SEEDS = 4  # rule 3: a paired difference that decides a verdict has >= 4 seeds
ROW_FIELDS = ("criterion_sha", "finished_at", "seed", "total_steps", "scored",
              "budget_exempt")


class CriterionMismatch(ValueError):
    """Rows or a results folder belong to another criterion than the one in force."""


def _source_of(fns: Sequence[Callable[..., Any]]) -> str:
    import inspect

    return "\n\n".join(inspect.getsource(f) for f in fns)


def criterion_spec(criterion: str, *, grids: Mapping[str, Any], seeds: Mapping[str, Any],
                   budgets: Mapping[str, Any], decide: Sequence[Callable[..., Any]]
                   ) -> dict[str, Any]:
    """The pre-registered content of an experiment, with its sha256.

    Args:
      criterion: the decision rules in words (what the report prints).
      grids: batch sizes, lr grids and their extension rules.
      seeds: selection and evaluation seeds.
      budgets: step caps, epochs, thresholds.
      decide: the functions that turn rows into verdicts; their source is part of the
        criterion, so editing one changes the sha.

    Returns:
      ``{"criterion", "grids", "seeds", "budgets", "decide_source", "criterion_sha"}``;
      the sha is over the canonical JSON of the other five fields.
    """
    import hashlib
    import json

    spec = {"criterion": criterion, "grids": dict(grids), "seeds": dict(seeds),
            "budgets": dict(budgets), "decide_source": _source_of(decide)}
    canon = json.dumps(spec, sort_keys=True, default=str).encode()
    spec["criterion_sha"] = hashlib.sha256(canon).hexdigest()
    return spec


def preregister(out: PathLike, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Writes ``out/criterion.json`` (with ``fixed_at``) unless it already holds ``spec``.

    Args:
      out: the experiment's results folder.
      spec: from :func:`criterion_spec`.

    Returns:
      The criterion in force (the stored one, so ``fixed_at`` is the first write's time).

    Raises:
      CriterionMismatch: the folder holds another criterion (or rows without one): a
        changed criterion needs a new results folder, the old one deleted or kept as
        superseded elsewhere, never mixed.
    """
    import json

    path = Path(out) / "criterion.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("criterion_sha") != spec["criterion_sha"]:
            raise CriterionMismatch(
                f"{path}: fixed at {stored.get('fixed_at')} with criterion_sha "
                f"{str(stored.get('criterion_sha'))[:12]}, but the script's criterion is now "
                f"{spec['criterion_sha'][:12]}: move the folder aside as superseded or "
                f"delete it (rows of two criteria are never mixed)")
        return stored
    if (Path(out) / "rows.jsonl").exists():
        raise CriterionMismatch(f"{Path(out) / 'rows.jsonl'} exists without criterion.json: "
                                f"rows of an unregistered criterion; move the folder aside")
    fixed = {**spec, "fixed_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(fixed, path)
    return fixed


def read_criterion(out: PathLike) -> dict[str, Any]:
    """The stored ``criterion.json`` of a results folder."""
    import json

    path = Path(out) / "criterion.json"
    if not path.exists():
        raise CriterionMismatch(f"{path}: no criterion.json (nothing was pre-registered)")
    return json.loads(path.read_text())


def load_registered_rows(out: PathLike, sha: str) -> list[dict[str, Any]]:
    """The rows of ``out/rows.jsonl``, refusing (one line) any of another criterion.

    Raises:
      CriterionMismatch: a row lacks a field of :data:`ROW_FIELDS` or carries another
        ``criterion_sha``.
    """
    path = Path(out) / "rows.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    for i, r in enumerate(rows, 1):
        missing = [f for f in ROW_FIELDS if f not in r]
        if missing:
            raise CriterionMismatch(f"{path}:{i}: row lacks {missing}: not a registered row")
        if r["criterion_sha"] != sha:
            raise CriterionMismatch(
                f"{path}:{i}: row of criterion_sha {str(r['criterion_sha'])[:12]}, not "
                f"{sha[:12]}: refusing to score rows of another criterion")
    return rows


def score_row(row: Mapping[str, Any], *, selection_seeds: Sequence[int] = (),
              min_steps: int = MIN_SCORED_STEPS, min_bn: int = MIN_BN_EXAMPLES
              ) -> tuple[bool, str | None]:
    """Whether a run may be scored, and why not (rules 1, 3 and 5 of issue 23).

    A run on a selection seed only chooses the learning rate; a run that is not
    ``budget_exempt`` with fewer than ``min_steps`` optimizer steps is budget-bound;
    BatchNorm over fewer than ``min_bn`` examples (``bn_examples``) is degenerate. A run
    that diverged is scored (divergence is a result at its lr).

    Example:
      >>> score_row({"seed": 0, "total_steps": 120, "budget_exempt": False})
      (False, 'budget-bound: 120 steps < 200')
      >>> score_row({"seed": 0, "total_steps": 120, "budget_exempt": True})
      (True, None)
      >>> score_row({"seed": 9, "total_steps": 500, "budget_exempt": False},
      ...           selection_seeds=(9,))
      (False, 'lr-selection seed 9')
    """
    if int(row["seed"]) in set(selection_seeds):
        return False, f"lr-selection seed {row['seed']}"
    bn = row.get("bn_examples")
    if bn is not None and int(bn) < min_bn:
        return False, f"BatchNorm over {bn} examples < {min_bn}"
    steps = row.get("total_steps")
    if not row.get("budget_exempt") and (steps is None or int(steps) < min_steps):
        return False, f"budget-bound: {steps} steps < {min_steps}"
    return True, None


def scored(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Only the rows marked ``scored``."""
    return [dict(r) for r in rows if r.get("scored")]


def point_key(point: Mapping[str, Any]) -> str:
    """Canonical text of a run point (how a row is matched to the point it ran)."""
    import json

    return json.dumps({k: point[k] for k in sorted(point)}, sort_keys=True, default=str)


class Registered(NamedTuple):
    """What a v3 experiment hands to :func:`run_experiment`.

    Attributes:
      spec: from :func:`criterion_spec`.
      plan: ``(rows so far) -> points wanted now`` (priority order), adaptive: it may add
        grid extensions and evaluation seeds as rows arrive.
      to_row: ``(results row of the sweep, its run folder, the point) -> flat row`` with at
        least ``seed``, ``total_steps``, ``budget_exempt`` (and ``bn_examples`` with BN);
        the harness adds ``criterion_sha``, ``finished_at``, ``scored``, ``why_not``,
        ``point``, ``cpu_s`` and ``load_avg``.
      selection_seeds: seeds that only choose learning rates (never scored).
      train_fn: ``config -> summary`` (default :func:`lars_jax.train.train`).
    """

    spec: dict[str, Any]
    plan: Callable[[list[dict[str, Any]]], Sequence[Mapping[str, Any]]]
    to_row: Callable[[Mapping[str, Any], Path, Mapping[str, Any]], dict[str, Any]]
    selection_seeds: tuple[int, ...] = ()
    train_fn: Callable[[Any], dict[str, Any]] | None = None


def train_until(reached: Callable[[Path], bool], chunks: Callable[[Any], Sequence[int]]
                ) -> Callable[[Any], dict[str, Any]]:
    """A ``train_fn`` that trains in chunks of steps and stops once ``reached(workdir)``.

    With a constant learning rate the run is the same as one uninterrupted run of its
    length (the trainer resumes exactly from the chunk's checkpoint), so a steps-to-target
    run need not pay for the steps after its target: the cap is the config's ``epochs``,
    the chunk ends ``chunks(config)`` (increasing step counts, the last one the cap).
    """
    def fn(config: Any) -> dict[str, Any]:
        from lars_jax.train import train

        if config.schedule != "constant" or config.warmup_epochs:
            raise ValueError("train_until needs schedule='constant' without warmup (a "
                             "chunked run must equal one run of the full length)")
        spe, _ = config.run_steps(config.num_train_examples())
        summary: dict[str, Any] = {}
        for steps in chunks(config):
            summary = train(dataclasses.replace(config, epochs=steps / spe, resume=True,
                                                checkpoint_every_steps=0))
            if reached(Path(config.workdir)):
                break
        return summary

    return fn


def _append_row(out: Path, row: Mapping[str, Any]) -> None:
    import json

    line = (json.dumps(dict(row), default=float) + "\n").encode()
    fd = os.open(out / "rows.jsonl", os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
    try:
        os.write(fd, line)  # one write per line: concurrent workers do not interleave
    finally:
        os.close(fd)


def _run_registered(base: Any, reg: Registered, out: Path, sha: str,
                    max_minutes: float | None) -> None:
    """Runs what ``reg.plan`` asks for, one claimed point at a time, appending a stamped
    row to ``out/rows.jsonl`` after each run."""
    t0 = time.perf_counter()
    runs = out / "runs"
    while True:
        rows = load_registered_rows(out, sha)
        done = {r["point_key"] for r in rows}
        todo = [dict(p) for p in reg.plan(rows) if point_key(p) not in done]
        if not todo:
            return
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            print(f"time budget of {max_minutes:g} min spent: {len(todo)} runs left", flush=True)
            return
        from lars_jax.runs.sweep import run_name

        mine = next((p for p in todo if _claim(out / ".claims" / run_name(p))), None)
        if mine is None:
            print(f"{len(todo)} runs left, all claimed by other processes", flush=True)
            return
        cpu0, load0 = time.process_time(), os.getloadavg()[0]
        (res,) = run_points(base, [mine], runs, train_fn=reg.train_fn)
        row = dict(reg.to_row(res, run_dir(res, runs), mine))
        row.update(point=mine, point_key=point_key(mine), criterion_sha=sha,
                   finished_at=res.get("finished_at") or _dt.datetime.now(_dt.UTC).isoformat(
                       timespec="seconds"),
                   wall_s=res.get("time_s"), cpu_s=round(time.process_time() - cpu0, 2),
                   load_avg=[round(load0, 2), round(os.getloadavg()[0], 2)])
        row.setdefault("budget_exempt", False)
        ok, why = score_row(row, selection_seeds=reg.selection_seeds)
        row.update(scored=ok, why_not=why)
        _append_row(out, row)
