"""Tests for lars_jax.runs.plotting: PNG files are written, readable and not blank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from lars_jax.runs.plotting import (
    plot_bars,
    plot_heatmap,
    plot_layer_stats,
    plot_lines,
    plot_run,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(workdir: Path, *, truncated: bool = False) -> None:
    rows = []
    for step in range(1, 41):
        epoch = step / 10
        rows.append(
            {
                "step": step,
                "epoch": epoch,
                "loss": 2.3 * math.exp(-epoch),
                "accuracy": 1 - 0.9 * math.exp(-epoch),
                "lr": 0.1 * min(1.0, epoch),
                "images_per_sec": 1000.0,
            }
        )
        if step % 10 == 0:
            rows.append({"step": step, "epoch": epoch, "test_loss": 1.0, "test_accuracy": 0.8})
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if truncated:
        text += '{"step": 41, "los'
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.jsonl").write_text(text)


def _assert_png(path: Path, min_width: int = 300) -> np.ndarray:
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.shape[1] >= min_width and img.shape[0] >= 200
    # Not a blank canvas: there is drawn content in several colours.
    assert img[..., :3].std() > 0.05
    return img


def test_plot_run_writes_curves_png(tmp_path):
    _write_metrics(tmp_path, truncated=True)
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    img = _assert_png(out, min_width=900)
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side


def test_plot_run_custom_output_and_step_axis(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = plot_run(tmp_path, tmp_path / "sub" / "x.png", title="t")
    _assert_png(out)
    assert not (tmp_path / "curves.png").exists()


def test_plot_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "images_per_sec": 3.0}))
    with pytest.raises(ValueError, match="no row with a loss"):
        plot_run(tmp_path)


def test_plot_lines_log_axis_and_nan_gap(tmp_path):
    out = plot_lines(
        {
            "lars": ([128, 1024, 8192], [0.9, 0.89, 0.85]),
            "sgd": ([8192, 128, 1024], [float("nan"), 0.9, 0.8]),  # unsorted, diverged point
        },
        tmp_path / "lines.png",
        xlabel="batch size",
        ylabel="test accuracy",
        title="accuracy vs batch",
        logx=2,
        xticks=[128, 1024, 8192],
        hlines={"target": 0.88},
    )
    _assert_png(out)


def test_plot_lines_validates(tmp_path):
    with pytest.raises(ValueError, match="series"):
        plot_lines({}, tmp_path / "a.png", xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="'a'"):
        plot_lines({"a": ([1, 2], [1])}, tmp_path / "a.png", xlabel="x", ylabel="y")


def test_plot_heatmap(tmp_path):
    out = plot_heatmap(
        [[0.9, None, 0.5], [0.8, float("nan"), 0.7]],
        tmp_path / "heat.png",
        row_labels=[128, 1024],
        col_labels=[0.1, 0.4, 1.6],
        xlabel="base lr",
        ylabel="batch size",
        colorbar_label="accuracy",
    )
    _assert_png(out)
    with pytest.raises(ValueError, match="2 rows of 3"):
        plot_heatmap(
            [[1, 2, 3]],
            tmp_path / "h.png",
            row_labels=[1, 2],
            col_labels=[1, 2, 3],
            xlabel="x",
            ylabel="y",
        )


def test_plot_run_diverged_run(tmp_path):
    rows = [
        {"step": s, "loss": (1.0 / s if s < 5 else float("nan")), "lr": 0.1} for s in range(1, 9)
    ]
    rows.append({"step": 8, "test_accuracy": float("nan"), "test_loss": float("inf")})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert "NaN" in (tmp_path / "metrics.jsonl").read_text()
    _assert_png(plot_run(tmp_path))


def test_layer_stats_plot(tmp_path):
    layers = [f"block_{i}/conv/kernel" for i in (0, 2, 10)]
    rows = []
    for s in range(1, 11):
        row = {"kind": "train", "step": s, "loss": 1.0 / s, "lr": 0.1}
        for i, name in enumerate(layers):
            row[f"trust_ratio/{name}"] = 1e-3 * (i + 1) * s
            row[f"grad_norm/{name}"] = 1.0 / s
        rows.append(row)
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    plot_run(tmp_path)
    img = _assert_png(tmp_path / "layer_stats.png")
    assert img.shape[1] > 1.5 * img.shape[0]  # two panels: trust ratio and grad norm
    assert plot_layer_stats(tmp_path, tmp_path / "tr.png", stats=("trust_ratio",)).exists()
    assert plot_layer_stats(tmp_path, stats=("weight_norm",)) is None


def test_plot_bars(tmp_path):
    out = plot_bars(
        {"sgd": 0.9, "lars": None, "larc": float("nan"), "clars": 0.5},
        tmp_path / "bars.png",
        xlabel="test accuracy",
        title="by run",
    )
    _assert_png(out)
    with pytest.raises(ValueError, match="values"):
        plot_bars({}, tmp_path / "b.png", xlabel="x")
