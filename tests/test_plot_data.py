"""The plots draw the right data: line, bar and cell values read back from the figures.

`lars_jax.runs.plotting` returns the path of the PNG it wrote; these tests record each figure
as it is saved (``Figure.savefig`` wrapped) and compare its artists' data with the
metrics the test wrote, computed here. `tests/test_plotting.py` checks the files.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from lars_jax.runs import plotting


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures saved during the test, in order."""
    figures = []
    original = Figure.savefig

    def record(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def _lines(ax):
    """label -> (xs, ys) of the axes' data lines (reference lines have no label)."""
    return {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
            for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def _write(workdir, rows, tail=""):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_plot_run_draws_train_test_and_lr_series(tmp_path, saved_figures):
    """plot_run's three panels hold exactly the logged values: train loss and accuracy
    of the train rows, test loss and accuracy of the eval rows (at their epochs), the
    lr of the train rows, the best test accuracy as a reference line; the loss axis is
    logarithmic because the loss spans more than a factor 20; a truncated last line is
    ignored.

    Catches: train and test series swapped or merged, eval rows drawn on the train
    line, the step used as x while epochs exist, another key drawn in the lr panel,
    the best accuracy taken from the train rows, the partial last row parsed."""
    train = [{"kind": "train", "step": s, "epoch": s / 4, "loss": 3.0 * 0.5**s,
              "accuracy": 0.1 + 0.05 * s, "lr": 0.01 * s} for s in range(1, 13)]
    evals = [{"kind": "eval", "step": s, "epoch": s / 4, "test_loss": 2.0 / s,
              "test_accuracy": a} for s, a in ((4, 0.3), (8, 0.6), (12, 0.5))]
    _write(tmp_path, train[:4] + evals[:1] + train[4:8] + evals[1:2] + train[8:] + evals[2:],
           tail='{"kind": "train", "step": 13, "loss": 99')
    plotting.plot_run(tmp_path)
    (fig,) = saved_figures
    ax_loss, ax_acc, ax_lr = fig.axes[:3]
    epochs = [r["epoch"] for r in train]
    eval_epochs = [r["epoch"] for r in evals]
    loss = _lines(ax_loss)
    np.testing.assert_allclose(loss["train"][0], epochs)
    np.testing.assert_allclose(loss["train"][1], [r["loss"] for r in train])
    np.testing.assert_allclose(loss["test"][0], eval_epochs)
    np.testing.assert_allclose(loss["test"][1], [r["test_loss"] for r in evals])
    assert ax_loss.get_yscale() == "log"
    acc = _lines(ax_acc)
    np.testing.assert_allclose(acc["train"][1], [r["accuracy"] for r in train])
    np.testing.assert_allclose(acc["test"], [eval_epochs, [0.3, 0.6, 0.5]])
    best = [ln for ln in ax_acc.get_lines() if ln.get_label().startswith("_")]
    assert [float(ln.get_ydata()[0]) for ln in best] == [0.6]
    (lr_line,) = ax_lr.get_lines()
    np.testing.assert_allclose(lr_line.get_xdata(), epochs)
    np.testing.assert_allclose(lr_line.get_ydata(), [r["lr"] for r in train])


def test_plot_run_uses_steps_without_epochs_and_linear_loss_axis(tmp_path, saved_figures):
    """Without `epoch` keys the x values are the steps; a loss within a factor 20 keeps a
    linear axis. Catches: a hard-coded x key, a log axis switched on unconditionally."""
    rows = [{"step": s, "loss": 2.0 - 0.01 * s, "accuracy": 0.5} for s in (10, 20, 30)]
    _write(tmp_path, rows)
    plotting.plot_run(tmp_path)
    ax_loss = saved_figures[0].axes[0]
    np.testing.assert_allclose(_lines(ax_loss)["train"], [[10, 20, 30], [1.9, 1.8, 1.7]])
    assert ax_loss.get_yscale() == "linear"


def test_plot_lines_sorts_points_and_leaves_gaps(tmp_path, saved_figures):
    """plot_lines draws each series sorted by x, non-finite values as NaN gaps, the
    reference lines at their y, on the requested log bases.

    Catches: points drawn in input order (zig-zag lines), inf drawn as a huge value or
    dropped (shifting the later points), series labels mixed up, a log base ignored."""
    series = {"lars": ([4096, 256, 1024], [0.8, 0.9, math.inf]),
              "sgd": ([256, 1024, 4096], [0.85, math.nan, 0.5])}
    plotting.plot_lines(series, tmp_path / "a.png", xlabel="batch", ylabel="acc", logx=2,
                        hlines={"target": 0.7})
    (fig,) = saved_figures
    (ax,) = fig.axes
    lines = _lines(ax)
    np.testing.assert_array_equal(lines["lars"][0], [256, 1024, 4096])
    np.testing.assert_array_equal(lines["lars"][1], [0.9, np.nan, 0.8])
    np.testing.assert_array_equal(lines["sgd"][1], [0.85, np.nan, 0.5])
    refs = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]
    assert [float(ln.get_ydata()[0]) for ln in refs] == [0.7]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert ax.get_yscale() == "linear"


def test_plot_layer_stats_draws_each_layer_of_each_statistic(tmp_path, saved_figures):
    """One panel per statistic, one line per layer with that layer's logged values (zeros
    left out of the log axis as NaN); with trust ratios logged, the norm panels keep
    only the layers that have a ratio.

    Catches: layers' series crossed (values of block_2 drawn as block_10: the natural
    sort), a zero drawn on a log axis, norm panels showing biases and BN parameters."""
    rows = []
    for s in (1, 2, 3):
        rows.append({"step": s, "loss": 1.0,
                     "trust_ratio/block_2/kernel": 0.1 * s, "trust_ratio/block_10/kernel": 0.0,
                     "weight_norm/block_2/kernel": 2.0 * s, "weight_norm/block_10/kernel": 3.0,
                     "weight_norm/block_2/bias": 5.0, "grad_norm/block_2/kernel": 0.5 / s,
                     "grad_norm/block_10/kernel": 0.25})
    _write(tmp_path, rows)
    plotting.plot_layer_stats(tmp_path)
    (fig,) = saved_figures
    tr, wn, gn = fig.axes[:3]
    assert [a.get_title() for a in (tr, wn, gn)] == [
        "trust ratio per layer", "weight norm per layer", "grad norm per layer"]
    lines = _lines(tr)
    assert list(lines) == ["block_2", "block_10"]
    np.testing.assert_allclose(lines["block_2"], [[1, 2, 3], [0.1, 0.2, 0.3]])
    assert np.all(np.isnan(lines["block_10"][1]))
    lines = _lines(wn)
    assert list(lines) == ["block_2", "block_10"]  # the bias (no trust ratio) is left out
    np.testing.assert_allclose(lines["block_2"][1], [2.0, 4.0, 6.0])
    np.testing.assert_allclose(lines["block_10"][1], [3.0, 3.0, 3.0])
    np.testing.assert_allclose(_lines(gn)["block_2"][1], [0.5, 0.25, 0.5 / 3])
    assert {a.get_yscale() for a in (tr, wn, gn)} == {"log"}


def test_plot_bars_widths_and_labels(tmp_path, saved_figures):
    """Each bar's width is its value, in the given order top to bottom; None and
    non-finite values get no bar and the texts "n/a" and "nan".

    Catches: bars reordered (sorted by value), None drawn as a value, a nan bar that
    breaks the axis limits, labels attached to the wrong bars."""
    values = {"a": 0.5, "b": None, "c": 2.0, "d": math.inf}
    plotting.plot_bars(values, tmp_path / "b.png", xlabel="x")
    (ax,) = saved_figures[0].axes
    bars = ax.patches
    np.testing.assert_allclose([b.get_width() for b in bars], [0.5, 0.0, 2.0, 0.0])
    np.testing.assert_allclose([b.get_y() + b.get_height() / 2 for b in bars], [0, 1, 2, 3])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c", "d"]
    assert ax.yaxis_inverted()  # y = 0 ("a", the first) at the top
    assert [t.get_text().strip() for t in ax.texts] == ["0.5", "n/a", "2", "nan"]
    assert ax.get_xlim() == pytest.approx((0.0, 2.0 * 1.15))


def test_plot_heatmap_cells_hold_the_values(tmp_path, saved_figures):
    """The image holds the grid (row i at y=i, column j at x=j), missing and non-finite
    cells are masked and labelled, the colour scale spans the finite values.

    Catches: the grid transposed, rows flipped, a diverged (inf) cell coloured as the
    maximum, a None cell drawn as 0, cell texts out of place."""
    values = [[0.1, 0.2, None], [0.4, math.inf, 0.6]]
    plotting.plot_heatmap(values, tmp_path / "h.png", row_labels=["r0", "r1"],
                          col_labels=[1, 2, 3], xlabel="x", ylabel="y",
                          nonfinite_label="diverged")
    ax = saved_figures[0].axes[0]
    (im,) = ax.get_images()
    arr = np.ma.filled(np.ma.asarray(im.get_array(), float), np.nan)
    np.testing.assert_array_equal(arr, [[0.1, 0.2, np.nan], [0.4, np.nan, 0.6]])
    assert im.get_clim() == (0.1, 0.6)
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
             for t in ax.texts}
    assert texts == {(0, 0): "0.100", (1, 0): "0.200", (2, 0): "n/a",
                     (0, 1): "0.400", (1, 1): "diverged", (2, 1): "0.600"}
