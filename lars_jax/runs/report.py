"""Markdown reports over results folders: load run results, tabulate, plot, write.

A *results folder* is what ``lars-jax sweep`` writes (``results.jsonl``, one row per
run, plus one subfolder per run) or any folder whose subfolders are training runs
(each with ``summary.json`` and ``metrics.jsonl``, as ``lars-jax train`` writes).
The functions here are generic so that experiment scripts can build their own
reports from them:

* :func:`load_results` returns one dict per run: ``run`` (name), ``workdir``,
  ``status``, ``varied`` (the swept values), ``config`` and ``summary``.
* :func:`lookup` reads a value from such a row by a short name (``batch_size``,
  ``test_accuracy``) or a dotted path (``config.optimizer``).
* :func:`markdown_table` renders rows as a GitHub-flavoured markdown table.
* :func:`write_report` writes ``report.md`` from a title and a list of sections
  (markdown text and images).
* :func:`summary_report` is what ``lars-jax report`` does: a table of every run and
  the plots that fit the sweep's shape.

References:
  Gruber, "Markdown" (2004) and the GitHub Flavored Markdown spec (tables), 2019.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lars_jax.runs.errors import ConfigError
from lars_jax.runs.plotting import plot_bars, plot_heatmap, plot_lines
from lars_jax.runs.run_files import (
    CONFIG,
    CONFIG_FILE,
    EPOCH,
    ERROR,
    IMAGES_PER_S,
    METRICS_FILE,
    PLOT_FILE,
    RESULTS_FILE,
    RUN,
    RUN_DONE,
    STATUS,
    STATUS_OK,
    STEP,
    STEPS,
    SUMMARY,
    SUMMARY_FILE,
    TEST_ACCURACY,
    TEST_LOSS,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    TRAIN_TIME_S,
    VARIED,
    WALL_TIME_S,
    WORKDIR,
    read_json,
    read_jsonl_skipping,
)

PathLike = str | os.PathLike[str]
Formatter = str | Callable[[Any], str]


# Summary metrics shown first (when present) in default tables, in this order.
PREFERRED_METRICS = (TEST_ACCURACY, TEST_LOSS, TRAIN_LOSS, TRAIN_ACCURACY, STEPS,
                     IMAGES_PER_S, WALL_TIME_S, TRAIN_TIME_S)
_MISSING = object()


class Section(NamedTuple):
    """One section of a report.

    Attributes:
      heading: the section's ``##`` heading.
      body: markdown text (paragraphs, tables from :func:`markdown_table`, lists).
      images: PNG files shown after the body, as paths (made relative to the report's
        folder when they lie inside it).
    """

    heading: str
    body: str = ""
    images: Sequence[PathLike] = ()


# --------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any] | None:
    """A run file's JSON object, or None when the run has not written it (yet) or it is
    damaged (named in one line on stderr: the report goes on with the other runs)."""
    try:
        value = read_json(path) if path.exists() else None
    except ValueError as e:
        print(f"lars_jax report: {e}; skipped", file=sys.stderr, flush=True)
        return None
    return value if isinstance(value, dict) else None


def _status(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return "incomplete"
    status = summary.get(STATUS, STATUS_OK)
    return RUN_DONE if status == STATUS_OK else str(status)


def _run_row(run_dir: Path, root: Path) -> dict[str, Any]:
    summary = _read_json(run_dir / SUMMARY_FILE)
    config = _read_json(run_dir / CONFIG_FILE)
    if config is None and summary is not None and isinstance(summary.get(CONFIG), dict):
        config = summary[CONFIG]
    name = run_dir.name if run_dir != root else root.resolve().name
    return {
        RUN: name,
        WORKDIR: str(run_dir),
        STATUS: _status(summary),
        VARIED: {},
        CONFIG: config or {},
        SUMMARY: {k: v for k, v in (summary or {}).items() if k != CONFIG},
    }


def load_results(folder: PathLike) -> list[dict[str, Any]]:
    """Loads every run of a results folder.

    Rows come from ``<folder>/results.jsonl`` when it exists (the last row of each
    run name wins, so a retried run replaces its earlier row), then from every
    subfolder (and the folder itself) holding ``summary.json`` or ``metrics.jsonl``
    that ``results.jsonl`` does not already name: such a run's status is ``done``
    when its summary says ``"status": "ok"`` (or has no status), the summary's
    status otherwise (e.g. ``nonfinite``), and ``incomplete`` without a summary.
    The config comes from the run's ``config.json`` (or the summary's ``config``).
    A damaged line of ``results.jsonl`` or of a run's ``metrics.jsonl``, or a damaged
    ``summary.json``, is named on stderr and skipped; the other runs are reported.

    Args:
      folder: the results folder.

    Returns:
      One dict per run with at least the keys ``run``, ``workdir`` (absolute
      path as a string), ``status``, ``varied``, ``config`` and ``summary``,
      in ``results.jsonl`` order, then by subfolder name.

    Raises:
      FileNotFoundError: ``folder`` does not exist.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {str(root)!r} does not exist")
    rows: dict[str, dict[str, Any]] = {}
    results = root / RESULTS_FILE
    if results.exists():
        for i, row in enumerate(read_jsonl_skipping(results)):
            name = str(row.get("run", f"row{i}"))
            row = dict(row)
            row.setdefault("run", name)
            row.setdefault("status", "done")
            row.setdefault("varied", {})
            row.setdefault("config", {})
            row.setdefault("summary", {})
            wd = Path(row.get("workdir", name))
            row["workdir"] = str(wd if wd.is_absolute() else (root / wd).resolve())
            rows.pop(name, None)  # keep the order of the latest row
            rows[name] = row
    known = {Path(r["workdir"]).resolve() for r in rows.values()}
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for run_dir in candidates:
        if run_dir.resolve() in known:
            continue
        if (run_dir / SUMMARY_FILE).exists() or (run_dir / METRICS_FILE).exists():
            row = _run_row(run_dir, root)
            row["workdir"] = str(run_dir.resolve())
            rows.setdefault(row["run"], row)
    return list(rows.values())


def load_metrics(row_or_workdir: Mapping[str, Any] | PathLike) -> list[dict[str, Any]]:
    """Reads a run's ``metrics.jsonl`` (an empty list when it has none).

    Args:
      row_or_workdir: a row from :func:`load_results` or a run folder.

    Returns:
      The metric rows, in file order.
    """
    if isinstance(row_or_workdir, Mapping):
        workdir = Path(row_or_workdir["workdir"])
    else:
        workdir = Path(row_or_workdir)
    path = workdir / METRICS_FILE
    return read_jsonl_skipping(path) if path.exists() else []


def lookup(row: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Reads a value from a result row.

    A dotted key is a path (``summary.test_accuracy``, ``config.optimizer``).
    A plain key is looked up at the top level, then in ``varied``, ``summary`` and
    ``config``, in that order.

    Args:
      row: a row from :func:`load_results` (or any nested mapping).
      key: a plain or dotted key.
      default: returned when the key is found nowhere.

    Returns:
      The value, or ``default``.

    Example:
      >>> lookup({"config": {"batch_size": 128}, "summary": {"acc": 0.9}}, "batch_size")
      128
      >>> lookup({"config": {"optim": {"lr": 0.1}}}, "config.optim.lr")
      0.1
    """
    if "." in key:
        value: Any = row
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                break
            value = value[part]
        else:
            return value
    if key in row:
        return row[key]
    for section in ("varied", "summary", "config"):
        sub = row.get(section)
        if isinstance(sub, Mapping) and key in sub:
            return sub[key]
    return default


# --------------------------------------------------------------------------- tables


def format_value(value: Any, fmt: Formatter | None = None, missing: str = "–") -> str:
    """Formats one table cell.

    Args:
      value: the value (``None`` means missing).
      fmt: a ``str.format`` pattern such as ``"{:.2%}"`` or a callable; default:
        floats with 4 significant digits, booleans as yes/no, lists comma-joined.
      missing: the text for a missing value.

    Returns:
      The cell text, with ``|`` escaped for markdown.

    Example:
      >>> format_value(0.912345), format_value(float("nan")), format_value(None)
      ('0.9123', 'nan', '–')
    """
    if value is None:
        text = missing
    elif callable(fmt):
        text = fmt(value)
    elif fmt is not None:
        try:
            text = fmt.format(value)
        except (ValueError, TypeError):
            text = str(value)
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
    elif isinstance(value, list | tuple):
        text = ", ".join(format_value(v, None, missing) for v in value)
    elif isinstance(value, Mapping):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str | tuple[str, str]],
    *,
    formats: Mapping[str, Formatter] | None = None,
    sort_by: str | Sequence[str] | None = None,
    missing: str = "–",
) -> str:
    """Renders rows as a GitHub-flavoured markdown table.

    Numeric columns are right-aligned. Values are read with :func:`lookup`, so a
    column may name a config field, a summary metric or a dotted path.

    Args:
      rows: the rows (dicts from :func:`load_results` or any mappings).
      columns: keys, or ``(key, header)`` pairs to give a column another header.
      formats: key -> ``str.format`` pattern or callable, per column.
      sort_by: key(s) to sort the rows by (missing values last); default: row order.
      missing: text for missing values.

    Returns:
      The table as markdown text (ending with a newline).

    Raises:
      ValueError: ``columns`` is empty.

    Example:
      >>> rows = [{"optimizer": "lars", "acc": 0.91}, {"optimizer": "sgd", "acc": 0.9}]
      >>> print(markdown_table(rows, ["optimizer", ("acc", "test acc")]), end="")
      | optimizer | test acc |
      | :-- | --: |
      | lars | 0.91 |
      | sgd | 0.9 |
    """
    if not columns:
        raise ValueError("columns: at least one column is needed")
    cols = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in columns]
    formats = formats or {}
    if sort_by is not None:
        keys = [sort_by] if isinstance(sort_by, str) else list(sort_by)
        rows = sorted(rows, key=lambda r: tuple(_sort_key(lookup(r, k)) for k in keys))
    values = [[lookup(r, key) for key, _ in cols] for r in rows]
    numeric = [
        bool(column) and all(_is_number(v) for v in column if v is not None)
        for column in (list(c) for c in zip(*values, strict=True))
    ] or [False] * len(cols)
    lines = [
        "| " + " | ".join(format_value(h, None, missing) for _, h in cols) + " |",
        "| " + " | ".join("--:" if n else ":--" for n in numeric) + " |",
    ]
    for vals in values:
        cells = [
            format_value(v, formats.get(key), missing)
            for v, (key, _) in zip(vals, cols, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _sort_key(v: Any) -> tuple[int, Any]:
    if v is None:
        return (2, "")
    if _is_number(v):
        return (0, float(v)) if math.isfinite(v) else (1, str(v))
    return (1, str(v))


# --------------------------------------------------------------------------- writing


def _image_ref(path: PathLike, folder: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def write_report(
    folder: PathLike,
    *,
    title: str,
    sections: Sequence[Section | tuple[str, str] | str] = (),
    intro: str = "",
    filename: str = "report.md",
) -> Path:
    """Writes a markdown report into ``folder``.

    Args:
      folder: where the report goes (created if needed); images inside it are
        linked by relative paths so the folder can be moved or committed as a whole.
      title: the ``#`` title.
      sections: :class:`Section` objects, ``(heading, body)`` pairs, or plain
        markdown strings (written as they are).
      intro: markdown text under the title.
      filename: the report's file name.

    Returns:
      The path of the report written.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> p = write_report(d, title="Demo", sections=[("Verdict", "LARS wins.")])
      >>> print(p.read_text(), end="")
      # Demo
      <BLANKLINE>
      ## Verdict
      <BLANKLINE>
      LARS wins.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"]
    if intro:
        parts.append(intro.strip() + "\n")
    for section in sections:
        if isinstance(section, str):
            parts.append(section.strip() + "\n")
            continue
        if not isinstance(section, Section):
            section = Section(*section)
        chunk = [f"## {section.heading}\n"]
        if section.body:
            chunk.append(section.body.strip() + "\n")
        for image in section.images:
            ref = _image_ref(image, root)
            chunk.append(f"![{Path(ref).stem}]({ref})\n")
        parts.append("\n".join(chunk))
    out = root / filename
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- default report


def varied_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config keys whose values differ between rows (swept keys first).

    Args:
      rows: rows from :func:`load_results`.

    Returns:
      Keys from the rows' ``varied`` dicts in first-seen order, then any other
      config key whose value differs between the rows whose config has it
      (``workdir`` excluded).
    """
    keys: list[str] = []
    for r in rows:
        for k in r.get("varied") or {}:
            if k not in keys:
                keys.append(k)
    config_keys = sorted({k for r in rows for k in (r.get("config") or {})})
    for k in config_keys:
        if k in keys or k in ("workdir", "name", "run_name"):
            continue
        vals = {
            json.dumps(r["config"][k], sort_keys=True)
            for r in rows
            if isinstance(r.get("config"), Mapping) and k in r["config"]
        }
        if len(vals) > 1:
            keys.append(k)
    return keys


def metric_keys(rows: Sequence[Mapping[str, Any]], limit: int = 6) -> list[str]:
    """Numeric summary metrics present in the rows, the most informative first.

    Args:
      rows: rows from :func:`load_results`.
      limit: the most keys returned.

    Returns:
      Keys of :data:`PREFERRED_METRICS` that occur, then other numeric scalar
      summary keys containing ``accuracy`` or ``loss``, up to ``limit``.
    """
    present: list[str] = []
    for r in rows:
        for k, v in (r.get("summary") or {}).items():
            if _is_number(v) and k not in present:
                present.append(k)
    ordered = [k for k in PREFERRED_METRICS if k in present]
    ordered += [k for k in present if k not in ordered and ("accuracy" in k or "loss" in k)]
    return ordered[:limit]


def _primary_metric(rows: Sequence[Mapping[str, Any]]) -> str | None:
    metrics = metric_keys(rows, limit=100)
    for k in metrics:
        if "accuracy" in k:
            return k
    return metrics[0] if metrics else None


def _label(combo: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in combo.items()) or "all runs"


def _groups(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_label({k: lookup(r, k) for k in keys}), []).append(r)
    return groups


def summary_report(
    folder: PathLike,
    *,
    title: str | None = None,
    metric: str | None = None,
    x: str | None = None,
    filename: str = "report.md",
) -> Path:
    """Writes the default report of a results folder (what ``lars-jax report`` does).

    Sections: a table of every run (swept values, status and the summary metrics);
    ``metric`` against the numeric swept key ``x`` (one line per combination of
    the other swept keys; log-2 x axis when the values span a factor of 8 or more);
    a heatmap when two numeric keys are swept; a bar per run when no swept key is
    numeric; test accuracy curves of every run
    from its ``metrics.jsonl``; links to each run's ``curves.png``. Plots are
    written to ``<folder>/plots/``.

    Args:
      folder: the results folder.
      title: report title; default "Results: <folder name>".
      metric: summary metric to plot; default the first accuracy metric found.
      x: swept key for the x axis; default ``batch_size`` when swept, else the
        numeric swept key with the most values.
      filename: the report's file name.

    Returns:
      The path of the report written.

    Raises:
      FileNotFoundError: ``folder`` does not exist.
      ValueError: the folder holds no runs, or ``metric``/``x`` is not in the results.
    """
    root = Path(folder)
    rows = load_results(root)
    if not rows:
        raise ValueError(f"{str(root)!r} holds no runs ({RESULTS_FILE} or run folders)")
    title = title or f"Results: {root.resolve().name}"
    varied = varied_keys(rows)
    metric = metric or _primary_metric(rows)
    if metric is not None and all(lookup(r, metric) is None for r in rows):
        raise ValueError(f"metric: {metric!r} is in no run's summary")
    numeric_varied = [
        k
        for k in varied
        if all(_is_number(v) for v in (lookup(r, k) for r in rows) if v is not None)
        and len({lookup(r, k) for r in rows} - {None}) > 1
    ]
    if x is not None and x not in varied:
        raise ValueError(f"x: {x!r} is not a swept key (swept: {', '.join(varied) or 'none'})")
    if x is None and numeric_varied:
        x = ("batch_size" if "batch_size" in numeric_varied
             else max(numeric_varied, key=lambda k: len({lookup(r, k) for r in rows})))
    columns: list[str | tuple[str, str]] = [RUN, *varied, STATUS, *metric_keys(rows)]
    if any(r.get(ERROR) for r in rows):
        columns.append(ERROR)
    sections = [Section("Runs", markdown_table(rows, columns, sort_by=varied or None))]
    plots = root / "plots"
    if metric is not None and x is not None:
        sections += _metric_vs_x(rows, varied, metric, x, plots)
        y_keys = [k for k in numeric_varied if k != x]
        if y_keys:
            sections += _heatmaps(rows, varied, metric, x, y_keys[0], plots)
    if metric is not None and x is None and len(rows) > 1:
        bars = {_run_label(r, varied): lookup(r, metric)
                for r in sorted(rows, key=lambda r: tuple(_sort_key(lookup(r, k))
                                                          for k in varied))}
        png = plot_bars(bars, plots / f"{metric}_by_run.png", xlabel=metric, title=metric)
        sections.append(Section(f"{metric} by run", "", [png]))
    sections += _accuracy_curves(rows, varied, plots) + _run_links(rows, root)
    return write_report(root, title=title, intro=_intro(rows, varied), sections=sections,
                        filename=filename)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``lars-jax report`` to the CLI's `commands` with its options."""
    parser = commands.add_parser(
        "report", allow_abbrev=False, help="write report.md (table and plots) for a results "
        "folder", description="Turn a results folder (a sweep's output, or a folder of run "
        "folders) into <folder>/report.md with a markdown table of the runs and PNG plots in "
        "<folder>/plots.")
    parser.add_argument("folder", help="the results folder")
    parser.add_argument("--title", help="report title (default: 'Results: <folder name>')")
    parser.add_argument("--metric",
                        help="summary metric to plot (default: the first accuracy metric)")
    parser.add_argument("--x", help="swept field on the x axis (default: batch_size if swept)")
    parser.add_argument("--output", default="report.md", help="file name (default: report.md)")
    return parser


def run_command(args: argparse.Namespace) -> int:
    """``lars-jax report``: a missing folder or a bad option is a `ConfigError`."""
    try:
        path = summary_report(args.folder, title=args.title, metric=args.metric, x=args.x,
                              filename=args.output)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    print(f"lars-jax report: wrote {path}")
    return 0


def _run_label(row: Mapping[str, Any], varied: Sequence[str]) -> str:
    return _label({k: lookup(row, k) for k in varied}) if varied else row[RUN]


def _intro(rows: Sequence[Mapping[str, Any]], varied: Sequence[str]) -> str:
    """The report's first paragraph: runs by status, and the settings all runs share."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get(STATUS))] = counts.get(str(r.get(STATUS)), 0) + 1
    intro = f"{len(rows)} run{'s' if len(rows) != 1 else ''}: " + ", ".join(
        f"{n} {s}" for s, n in sorted(counts.items())) + "."
    fixed = {
        k: v
        for k, v in next((r[CONFIG] for r in rows if r.get(CONFIG)), {}).items()
        if k not in varied and k != WORKDIR and not isinstance(v, Mapping)
    }
    if fixed:
        intro += (
            f"\n\n<details><summary>Settings shared by all runs ({len(fixed)})</summary>\n\n"
            + ", ".join(f"`{k}={format_value(v)}`" for k, v in fixed.items())
            + "\n\n</details>"
        )
    return intro


def _metric_vs_x(rows: Sequence[Mapping[str, Any]], varied: Sequence[str], metric: str,
                 x: str, plots: Path) -> list[Section]:
    """`metric` against the swept key `x`, one line per combination of the other keys."""
    series = {}
    for label, group in _groups(rows, [k for k in varied if k != x]).items():
        pts = [(lookup(r, x), lookup(r, metric)) for r in group]
        pts = [(a, math.nan if b is None else b) for a, b in pts if _is_number(a)]
        if pts:
            series[label] = ([p[0] for p in pts], [p[1] for p in pts])
    xs = sorted({p for xs_, _ in series.values() for p in xs_})
    log = bool(xs) and xs[0] > 0 and xs[-1] >= 8 * xs[0]
    png = plot_lines(series, plots / f"{metric}_vs_{x}.png", xlabel=x, ylabel=metric,
                     title=f"{metric} vs {x}", logx=2 if log else False,
                     xticks=xs if log and len(xs) <= 12 else None)
    return [Section(f"{metric} vs {x}", "One line per combination of the other swept "
                    "values; a missing point is a run that did not finish or diverged.",
                    [png])]


def _heatmaps(rows: Sequence[Mapping[str, Any]], varied: Sequence[str], metric: str, x: str,
              y: str, plots: Path) -> list[Section]:
    """`metric` over two numeric swept keys, one heatmap per combination of the others."""
    sections = []
    rest = [k for k in varied if k not in (x, y)]
    for label, group in itertools.islice(_groups(rows, rest).items(), 8):
        xv = sorted({lookup(r, x) for r in group} - {None})
        yv = sorted({lookup(r, y) for r in group} - {None})
        cell = {(lookup(r, y), lookup(r, x)): lookup(r, metric) for r in group}
        grid = [[cell.get((b, a)) for a in xv] for b in yv]
        safe = "".join(c if c.isalnum() or c in "-_=." else "_" for c in label)
        png = plot_heatmap(
            grid, plots / f"heatmap_{y}_{x}_{safe}.png",
            row_labels=[format_value(v) for v in yv], col_labels=[format_value(v) for v in xv],
            xlabel=x, ylabel=y, title=f"{metric} ({label})" if rest else metric,
            colorbar_label=metric)
        sections.append(Section(f"{metric} over {y} x {x}: {label}", "", [png]))
    return sections


def _accuracy_curves(rows: Sequence[Mapping[str, Any]], varied: Sequence[str], plots: Path
                     ) -> list[Section]:
    """The test accuracy of every run during training, from its metrics.jsonl."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    xk = EPOCH
    for r in rows:
        m = [row for row in load_metrics(r) if _is_number(row.get(TEST_ACCURACY))]
        if m:
            xk = EPOCH if all(EPOCH in row for row in m) else STEP
            curves[_run_label(r, varied)] = ([row[xk] for row in m],
                                             [row[TEST_ACCURACY] for row in m])
    if not curves:
        return []
    png = plot_lines(curves, plots / "test_accuracy_curves.png", xlabel=xk,
                     ylabel="test accuracy", title="Test accuracy during training",
                     markers=len(curves) <= 6)
    return [Section("Test accuracy curves", "", [png])]


def _run_links(rows: Sequence[Mapping[str, Any]], root: Path) -> list[Section]:
    """Links to each run's own plots."""
    links = []
    for r in rows:
        wd = Path(r[WORKDIR])
        pngs = [p for p in (PLOT_FILE, "layer_stats.png") if (wd / p).exists()]
        if pngs:
            refs = ", ".join(f"[{p[:-4]}]({_image_ref(wd / p, root)})" for p in pngs)
            links.append(f"- {r[RUN]}: {refs}")
    return [Section("Per-run curves", "\n".join(links))] if links else []
