"""Plots of training runs and sweeps, written as PNG files.

Three functions cover what the trainer and the experiments need:

* :func:`plot_run` reads a run's ``metrics.jsonl`` and writes ``curves.png`` with
    the training loss, train/test accuracy and the effective learning rate.
* :func:`plot_lines` draws one line per series (for example final test accuracy
    against batch size, one line per optimizer, on a log-x axis).
* :func:`plot_bars` draws one bar per label (a metric per run of a sweep over
  non-numeric values).
* :func:`plot_heatmap` draws a 2-D grid of values (for example final accuracy over
    batch size x base learning rate) with the numbers written in the cells.

Only matplotlib's object-oriented API with the Agg canvas is used, so importing or
calling these functions never changes the global pyplot backend and works on
machines without a display.

References:
    Hunter, "Matplotlib: A 2D graphics environment", Computing in Science &
    Engineering 9(3), 2007.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lars_jax.runs.run_files import (
    ACCURACY,
    EPOCH,
    LOSS,
    LR,
    METRICS_FILE,
    PLOT_FILE,
    STEP,
    TEST_ACCURACY,
    TEST_LOSS,
    read_jsonl_skipping,
)

if TYPE_CHECKING:  # matplotlib is imported lazily: `import lars_jax` stays light
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

# Keys looked up (in order) in the rows of metrics.jsonl (as the trainer writes them).
_X_KEYS = (EPOCH, STEP)
_TRAIN_LOSS_KEYS = (LOSS,)
_TRAIN_ACC_KEYS = (ACCURACY,)
_TEST_LOSS_KEYS = (TEST_LOSS,)
_TEST_ACC_KEYS = (TEST_ACCURACY,)
_LR_KEYS = (LR,)


def _first_key(row: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return k
    return None


def _series(
    rows: Sequence[Mapping[str, Any]], y_keys: Sequence[str], x_key: str
) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        k = _first_key(row, y_keys)
        x = row.get(x_key)
        if k is None or not isinstance(x, int | float):
            continue
        xs.append(float(x))
        ys.append(float(row[k]))
    return xs, ys


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure on an Agg canvas, without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, out)
    return out


def plot_run(workdir: PathLike, out: PathLike | None = None, *, title: str | None = None) -> Path:
    """Plots the learning curves of one training run.

    Reads ``<workdir>/metrics.jsonl``. Rows carrying a training loss (``loss``)
    are step rows; rows carrying ``test_accuracy`` or ``test_loss`` are evaluation
    rows. The x axis is ``epoch`` when the rows have it, else ``step``. Three
    panels: loss (train and test; log scale when it spans more than a factor 20),
    accuracy (train and test) and the effective learning rate.

    Args:
        workdir: the run's folder.
        out: the PNG file to write; default ``<workdir>/curves.png``.
        title: figure title; default the folder's name.

    Returns:
        The path of the PNG file written.

    Raises:
        FileNotFoundError: ``metrics.jsonl`` does not exist.
        ValueError: it holds no row with a loss or an accuracy.

    References:
        Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
        arXiv 1706.02677, 2017 (figures of training error against epochs, with the
        learning-rate schedule, are how large-batch runs are compared).
    """
    workdir = Path(workdir)
    rows = read_jsonl_skipping(workdir / METRICS_FILE)
    x_key = next((k for k in _X_KEYS if any(k in r for r in rows)), None)
    if x_key is None:
        raise ValueError(f"{workdir / METRICS_FILE}: no row has an 'epoch' or 'step' key")
    train_rows = [r for r in rows if _first_key(r, _TRAIN_LOSS_KEYS + _TRAIN_ACC_KEYS)]
    eval_rows = [r for r in rows if _first_key(r, _TEST_LOSS_KEYS + _TEST_ACC_KEYS)]
    if not train_rows and not eval_rows:
        raise ValueError(f"{workdir / METRICS_FILE}: no row with a loss or an accuracy")

    fig = _figure(figsize=(13, 4.0))
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    xlabel = x_key

    tx, ty = _series(train_rows, _TRAIN_LOSS_KEYS, x_key)
    ex, ey = _series(eval_rows, _TEST_LOSS_KEYS, x_key)
    if ty:
        ax_loss.plot(tx, ty, lw=1, alpha=0.8, label="train")
    if ey:
        ax_loss.plot(ex, ey, "o-", ms=3, lw=1.5, label="test")
    finite = [v for v in ty + ey if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 20 * min(finite):
        ax_loss.set_yscale("log")  # losses spanning decades: log scale shows the late phase
        from matplotlib import ticker

        ax_loss.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax_loss.set(xlabel=xlabel, ylabel="cross-entropy loss", title="Loss")

    tx, ty = _series(train_rows, _TRAIN_ACC_KEYS, x_key)
    ex, ey = _series(eval_rows, _TEST_ACC_KEYS, x_key)
    if ty:
        ax_acc.plot(tx, ty, lw=1, alpha=0.8, label="train")
    finite_acc = [v for v in ey if math.isfinite(v)]
    if ey:
        ax_acc.plot(ex, ey, "o-", ms=3, lw=1.5, label="test")
    if finite_acc:
        best = max(finite_acc)
        ax_acc.axhline(best, color="gray", lw=0.6, ls=":")
        ax_acc.annotate(
            f"best test {best:.4f}",
            xy=(0.98, 0.03),
            xycoords="axes fraction",
            ha="right",
            fontsize=8,
            color="dimgray",
        )
    ax_acc.set(xlabel=xlabel, ylabel="accuracy", title="Accuracy")

    lx, ly = _series(train_rows, _LR_KEYS, x_key)
    if ly:
        ax_lr.plot(lx, ly, lw=1.5, color="tab:green")
    else:
        ax_lr.text(0.5, 0.5, "no lr logged", ha="center", va="center", transform=ax_lr.transAxes)
    ax_lr.set(xlabel=xlabel, ylabel="effective learning rate", title="Learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title if title is not None else workdir.resolve().name)
    path = _save(fig, out if out is not None else workdir / PLOT_FILE)
    if any(k.partition("/")[0] in LAYER_STATS for r in train_rows for k in r):
        plot_layer_stats(workdir, rows=rows)
    return path


LAYER_STATS = ("trust_ratio", "weight_norm", "grad_norm")


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def plot_layer_stats(
    workdir: PathLike,
    out: PathLike | None = None,
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    stats: Sequence[str] = LAYER_STATS,
) -> Path | None:
    """Plots per-layer statistics (``<stat>/<layer>`` keys of ``metrics.jsonl``).

    One panel per statistic (by default the LARS trust ratio, the weight norm and
    the gradient norm), one line per layer coloured by its position in the
    parameter tree (names sorted with numbers compared as numbers, so
    ``block_2`` comes before ``block_10``), log-scale y (zeros are left out).
    When trust ratios are logged, the norm panels show the same layers (the ones
    LARS adapts; biases and BatchNorm parameters have no ratio). :func:`plot_run` calls this
    when the metrics have such keys (the trainer's ``log_layer_stats``).

    Args:
      workdir: the run's folder.
      out: the PNG file; default ``<workdir>/layer_stats.png``.
      rows: the metric rows, when already read.
      stats: the statistic prefixes to plot.

    Returns:
      The PNG path, or ``None`` when no row has any of these statistics.

    References:
      You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks",
      arXiv 1708.03888, 2017 (the ratio ||w|| / ||g|| varies by orders of magnitude
      between layers, which motivates per-layer learning rates).
    """
    workdir = Path(workdir)
    if rows is None:
        rows = read_jsonl_skipping(workdir / METRICS_FILE)
    x_key = next((k for k in _X_KEYS if any(k in r for r in rows)), "step")
    present = [st for st in stats if any(k.startswith(st + "/") for r in rows for k in r)]
    if not present:
        return None
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    by_stat = {
        st: sorted(
            {k.partition("/")[2] for r in rows for k in r if k.startswith(st + "/")},
            key=_natural_key,
        )
        for st in present
    }
    if "trust_ratio" in by_stat:
        # Norms of the layers LARS adapts (biases and BN parameters have no trust ratio).
        adapted = set(by_stat["trust_ratio"])
        by_stat = {st: [n for n in ns if n in adapted] or ns for st, ns in by_stat.items()}
    layers = sorted({n for ns in by_stat.values() for n in ns}, key=_natural_key)
    suffix = "/kernel" if all(n.endswith("/kernel") for n in layers) else ""
    color_of = {n: i for i, n in enumerate(layers)}
    norm = Normalize(0, max(1, len(layers) - 1))
    colormap = colormaps["viridis"]

    fig = _figure(figsize=(4.6 * len(present) + 2.2, 4.0))
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    handles: dict[str, Any] = {}
    for ax, st in zip(axes, present, strict=True):
        any_positive = False
        for layer in by_stat[st]:
            xs, ys = _series(rows, (f"{st}/{layer}",), x_key)
            ys = [v if v > 0 else math.nan for v in ys]  # log scale: drop zeros (e.g. BN bias)
            any_positive = any_positive or any(math.isfinite(v) for v in ys)
            label = layer[: -len(suffix)] if suffix else layer
            (line,) = ax.plot(xs, ys, lw=1, color=colormap(norm(color_of[layer])), label=label)
            handles.setdefault(label, line)
        if any_positive:
            ax.set_yscale("log")
        ax.set(xlabel=x_key, ylabel=st.replace("_", " "), title=f"{st.replace('_', ' ')} per layer")
        ax.grid(True, alpha=0.3)
    if len(handles) <= 16:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside right upper",
            fontsize=7,
            title=f"layer{suffix and ' (' + suffix[1:] + ')'}",
            title_fontsize=7,
        )
    else:
        sm = ScalarMappable(norm=norm, cmap=colormap)
        cbar = fig.colorbar(sm, ax=list(axes), pad=0.01)
        cbar.set_label(
            f"layer index, parameter-tree order ({layers[0]} ... {layers[-1]})", fontsize=7
        )
    fig.suptitle(f"{workdir.resolve().name}: per-layer statistics")
    return _save(fig, out if out is not None else workdir / "layer_stats.png")


def plot_lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    out: PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool | int = False,
    logy: bool | int = False,
    markers: bool = True,
    xticks: Sequence[float] | None = None,
    hlines: Mapping[str, float] | None = None,
) -> Path:
    """Draws one line per series and writes a PNG.

    Args:
        series: label -> (xs, ys). Points are sorted by x; NaN/inf values are drawn as
            gaps (a diverged run shows as a missing point, not as a wrong one).
        out: the PNG file to write.
        xlabel: x axis label.
        ylabel: y axis label.
        title: axes title.
        logx: log-scale x axis; ``True`` for base 10 or an int base (2 suits batch sizes).
        logy: log-scale y axis, same convention.
        markers: draw a marker at every point.
        xticks: explicit x tick positions, labelled with their plain values (useful on
            log axes, e.g. the batch sizes actually run).
        hlines: label -> y of horizontal reference lines (a target accuracy, say).

    Returns:
        The path of the PNG file written.

    Raises:
        ValueError: ``series`` is empty, or a series' xs and ys differ in length.

    References:
        Shallue et al., "Measuring the Effects of Data Parallelism on Neural Network
        Training", JMLR 20, 2019 (metrics against batch size on log axes).
    """
    if not series:
        raise ValueError("series: at least one series is needed")
    fig = _figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for label, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"series[{label!r}]: {len(xs)} x values but {len(ys)} y values")
        pts = sorted(zip((float(x) for x in xs), (float(y) for y in ys), strict=True))
        px = [p[0] for p in pts]
        py = [p[1] if math.isfinite(p[1]) else math.nan for p in pts]
        ax.plot(px, py, marker="o" if markers else None, ms=4, lw=1.5, label=str(label))
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="gray", ls="--", lw=1)
        ax.annotate(
            label,
            xy=(0.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=8,
            color="dimgray",
            va="bottom",
        )
    if logx:
        ax.set_xscale("log", base=10 if logx is True else int(logx))
    if logy:
        ax.set_yscale("log", base=10 if logy is True else int(logy))
    if xticks is not None:
        ax.set_xticks(list(xticks))
        ax.set_xticklabels([f"{t:g}" for t in xticks])
        ax.minorticks_off()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="major", alpha=0.3)
    if len(series) > 1 or (len(series) == 1 and next(iter(series))):
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_bars(
    values: Mapping[str, float | None],
    out: PathLike,
    *,
    xlabel: str,
    title: str = "",
    fmt: str = "{:.4g}",
) -> Path:
    """Draws one horizontal bar per label (e.g. a metric per run) and writes a PNG.

    Args:
      values: label -> value, drawn top to bottom in this order; ``None`` and
        non-finite values get no bar and are labelled ``n/a``/``nan``.
      out: the PNG file to write.
      xlabel: the value axis label.
      title: axes title.
      fmt: format of the numbers written beside the bars.

    Returns:
      The path of the PNG file written.

    Raises:
      ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("values: at least one bar is needed")
    labels = [str(k) for k in values]
    nums = [math.nan if v is None else float(v) for v in values.values()]
    fig = _figure(figsize=(6.4, max(2.2, 0.9 + 0.32 * len(labels))))
    ax = fig.subplots()
    ys = list(range(len(labels)))
    ax.barh(ys, [v if math.isfinite(v) else 0.0 for v in nums], color="tab:blue", alpha=0.8)
    finite = [v for v in nums if math.isfinite(v)]
    span = max(finite) if finite else 1.0
    for y, v, raw in zip(ys, nums, values.values(), strict=True):
        text = "n/a" if raw is None else (fmt.format(v) if math.isfinite(v) else "nan")
        ax.text(max(v, 0.0) if math.isfinite(v) else 0.0, y, " " + text, va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, span * 1.15 if span > 0 else 1.0)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out)


def plot_heatmap(
    values: Sequence[Sequence[float | None]],
    out: PathLike,
    *,
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    xlabel: str,
    ylabel: str,
    title: str = "",
    fmt: str = "{:.3f}",
    cmap: str = "viridis",
    colorbar_label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    nonfinite_label: str = "nan",
) -> Path:
    """Draws a grid of values as a heatmap with the numbers in the cells.

    Rows run along the y axis (first row at the top), columns along the x axis.
    Missing (``None``) and non-finite cells are drawn blank and labelled ``n/a``
    or ``nonfinite_label``, so a diverged or unfinished run is visible as such.

    Args:
        values: ``len(row_labels)`` rows of ``len(col_labels)`` values.
        out: the PNG file to write.
        row_labels: labels of the rows (y axis).
        col_labels: labels of the columns (x axis).
        xlabel: x axis label (what the columns are).
        ylabel: y axis label (what the rows are).
        title: axes title.
        fmt: format of the numbers written in the cells.
        cmap: matplotlib colormap name.
        colorbar_label: label of the colour bar.
        vmin: lower end of the colour scale (default: the smallest finite value).
        vmax: upper end of the colour scale (default: the largest finite value).
        nonfinite_label: the text of non-finite cells (e.g. ``"diverged"``).

    Returns:
        The path of the PNG file written.

    Raises:
        ValueError: the shape of ``values`` does not match the labels.

    References:
        Masters & Luschi, "Revisiting Small Batch Training for Deep Neural Networks",
        arXiv 1804.07612, 2018 (accuracy over batch size x learning rate grids).
    """
    n_rows, n_cols = len(row_labels), len(col_labels)
    if len(values) != n_rows or any(len(r) != n_cols for r in values):
        raise ValueError(
            f"values: expected {n_rows} rows of {n_cols} values to match row_labels and "
            f"col_labels, got shape {[len(r) for r in values]}"
        )
    grid = [[math.nan if v is None else float(v) for v in row] for row in values]
    finite = [v for row in grid for v in row if math.isfinite(v)]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    fig = _figure(figsize=(max(4.5, 1.5 + 0.9 * n_cols), max(3.2, 1.2 + 0.55 * n_rows)))
    ax = fig.subplots()
    ax.set_facecolor("0.9")  # missing / non-finite cells show as light gray
    masked = [[v if math.isfinite(v) else math.nan for v in row] for row in grid]
    im = ax.imshow(masked, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    cmap_obj = im.get_cmap()
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if values[i][j] is None:
                text, color = "n/a", "black"
            elif not math.isfinite(v):
                text, color = nonfinite_label, "black"
            else:
                text = fmt.format(v)
                frac = 0.5 if hi == lo else (v - lo) / (hi - lo)
                r, g, b, _ = cmap_obj(min(max(frac, 0.0), 1.0))
                color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels([str(c) for c in col_labels])
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([str(r) for r in row_labels])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    cbar = fig.colorbar(im, ax=ax)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    return _save(fig, out)
