"""Tests for lars_jax.runs.report: loading results folders, markdown tables, reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lars_jax.runs.report import (
    Section,
    load_metrics,
    load_results,
    lookup,
    markdown_table,
    summary_report,
    varied_keys,
    write_report,
)


def _run(folder: Path, name: str, cfg: dict, acc: float, metrics: bool = True) -> dict:
    wd = folder / name
    wd.mkdir(parents=True)
    summary = {"final_test_accuracy": acc, "final_train_loss": 1 - acc, "steps": 10}
    (wd / "summary.json").write_text(json.dumps(summary))
    if metrics:
        rows = [
            {"step": s, "epoch": s / 5, "loss": 1.0 / s, "accuracy": acc * s / 10}
            for s in range(1, 11)
        ]
        rows += [{"step": 10, "epoch": 2.0, "test_accuracy": acc, "test_loss": 1 - acc}]
        (wd / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return summary


def _sweep_folder(tmp_path: Path) -> Path:
    """A sweep over batch_size x optimizer written the way lars_jax.runs.sweep writes it."""
    out = tmp_path / "sweep"
    base = {"model": "resnet8", "epochs": 2.0, "learning_rate": 0.1, "workdir": "x"}
    lines = []
    accs = {(128, "sgd"): 0.9, (128, "lars"): 0.91, (1024, "sgd"): 0.7, (1024, "lars"): 0.88}
    for (bs, opt), acc in accs.items():
        name = f"batch_size={bs}__optimizer={opt}"
        cfg = {**base, "batch_size": bs, "optimizer": opt, "workdir": str(out / name)}
        summary = _run(out, name, cfg, acc)
        lines.append(
            {
                "run": name,
                "workdir": name,
                "status": "done",
                "varied": {"batch_size": bs, "optimizer": opt},
                "config": cfg,
                "summary": summary,
            }
        )
    # An earlier failed attempt of one run, superseded by its later row.
    lines.insert(
        0,
        {
            "run": "batch_size=1024__optimizer=sgd",
            "workdir": "batch_size=1024__optimizer=sgd",
            "status": "failed",
            "error": "boom",
            "varied": {"batch_size": 1024, "optimizer": "sgd"},
            "config": {},
            "summary": {},
        },
    )
    # A diverged run that only has a failure row.
    lines.append(
        {
            "run": "batch_size=8192__optimizer=sgd",
            "workdir": "batch_size=8192__optimizer=sgd",
            "status": "failed",
            "error": "NaN loss at step 3 | no checkpoint",
            "varied": {"batch_size": 8192, "optimizer": "sgd"},
            "config": {**base, "batch_size": 8192, "optimizer": "sgd"},
            "summary": {},
        }
    )
    (out / "results.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    # A run folder finished outside the sweep (no results row).
    _run(out, "extra", {}, 0.5, metrics=False)
    return out


def test_load_results_merges_rows_and_run_folders(tmp_path):
    out = _sweep_folder(tmp_path)
    rows = load_results(out)
    names = [r["run"] for r in rows]
    assert len(rows) == 6 and len(set(names)) == 6
    by = {r["run"]: r for r in rows}
    # The later row of a run replaces the earlier failed one.
    assert by["batch_size=1024__optimizer=sgd"]["status"] == "done"
    assert by["batch_size=8192__optimizer=sgd"]["status"] == "failed"
    assert by["extra"]["status"] == "done"
    assert by["extra"]["summary"]["final_test_accuracy"] == 0.5
    assert Path(by["batch_size=128__optimizer=lars"]["workdir"]).is_absolute()
    assert len(load_metrics(by["batch_size=128__optimizer=lars"])) == 11
    assert load_metrics(by["extra"]) == []
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing")


def test_lookup_order_and_paths():
    row = {
        "run": "r",
        "varied": {"lr": 2},
        "summary": {"lr": 3, "acc": 0.5},
        "config": {"lr": 4, "bs": 8},
    }
    assert lookup(row, "lr") == 2
    assert lookup(row, "acc") == 0.5
    assert lookup(row, "bs") == 8
    assert lookup(row, "config.lr") == 4
    assert lookup(row, "summary.missing", "d") == "d"
    assert lookup(row, "nope") is None


def test_markdown_table_content_sorting_and_formats():
    rows = [
        {"config": {"optimizer": "sgd", "batch_size": 1024}, "summary": {"acc": 0.70123}},
        {"config": {"optimizer": "lars", "batch_size": 128}, "summary": {"acc": float("nan")}},
        {"config": {"optimizer": "a|b", "batch_size": 256}, "summary": {}},
    ]
    table = markdown_table(
        rows,
        ["optimizer", ("batch_size", "B"), "acc"],
        sort_by="batch_size",
        formats={"acc": "{:.1%}"},
    )
    assert table.splitlines() == [
        "| optimizer | B | acc |",
        "| :-- | --: | --: |",
        "| lars | 128 | nan% |",
        "| a\\|b | 256 | – |",
        "| sgd | 1024 | 70.1% |",
    ]
    with pytest.raises(ValueError, match="columns"):
        markdown_table(rows, [])


def test_write_report_sections_and_relative_images(tmp_path):
    img = tmp_path / "plots" / "a.png"
    img.parent.mkdir()
    img.write_bytes(b"x")
    p = write_report(
        tmp_path,
        title="T",
        intro="Intro.",
        sections=[Section("S1", "Body.", [img]), ("S2", "Two."), "Raw text."],
    )
    text = p.read_text()
    assert text.startswith("# T\n\nIntro.\n")
    assert "## S1\n\nBody.\n\n![a](plots/a.png)" in text
    assert "## S2\n\nTwo." in text and text.rstrip().endswith("Raw text.")


def test_summary_report_from_synthesized_sweep(tmp_path):
    out = _sweep_folder(tmp_path)
    rows = load_results(out)
    assert varied_keys(rows)[:2] == ["batch_size", "optimizer"]
    report = summary_report(out, title="Sweep 1")
    text = report.read_text()
    assert text.startswith("# Sweep 1")
    assert "6 runs: 5 done, 1 failed" in text
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:4] == ["run", "batch_size", "optimizer", "status"]
    assert "final_test_accuracy" in cells
    # Each run's row has its accuracy, sorted by batch size then optimizer.
    table_rows = [line for line in text.splitlines() if line.startswith("| batch_size=")]
    assert [r.split("|")[1].strip() for r in table_rows] == [
        "batch_size=128__optimizer=lars",
        "batch_size=128__optimizer=sgd",
        "batch_size=1024__optimizer=lars",
        "batch_size=1024__optimizer=sgd",
        "batch_size=8192__optimizer=sgd",
    ]
    assert "| 0.88 |" in table_rows[2] and "| 0.7 |" in table_rows[3]
    assert "NaN loss at step 3 \\| no checkpoint" in table_rows[4]
    # Plots: metric vs batch size and the accuracy curves, linked relatively.
    for png in ("plots/final_test_accuracy_vs_batch_size.png", "plots/test_accuracy_curves.png"):
        assert f"]({png})" in text
        assert (out / png).stat().st_size > 1000
    assert "Settings shared by all runs" in text and "`model=resnet8`" in text


def test_summary_report_heatmap_for_two_numeric_keys(tmp_path):
    out = tmp_path / "grid"
    lines = []
    for bs in (64, 256):
        for lr in (0.1, 0.4):
            name = f"batch_size={bs}__learning_rate={lr}"
            acc = 0.9 - 0.1 * math.log2(bs / 64) * lr
            s = _run(out, name, {}, acc, metrics=False)
            lines.append(
                {
                    "run": name,
                    "workdir": name,
                    "varied": {"batch_size": bs, "learning_rate": lr},
                    "config": {"batch_size": bs, "learning_rate": lr},
                    "summary": s,
                }
            )
    (out / "results.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    text = summary_report(out).read_text()
    assert "over learning_rate x batch_size" in text
    assert (out / "plots" / "heatmap_learning_rate_batch_size_all_runs.png").exists()
    with pytest.raises(ValueError, match="metric"):
        summary_report(out, metric="nope")
    with pytest.raises(ValueError, match="x: 'epochs'"):
        summary_report(out, x="epochs")


def test_summary_report_categorical_sweep_has_bars(tmp_path):
    out = tmp_path / "cat"
    lines = []
    for opt, acc in (("sgd", 0.8), ("lars", 0.85)):
        name = f"optimizer={opt}"
        s = _run(out, name, {}, acc, metrics=False)
        lines.append(
            {
                "run": name,
                "workdir": name,
                "varied": {"optimizer": opt},
                "config": {"optimizer": opt},
                "summary": s,
            }
        )
    (out / "results.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    text = summary_report(out).read_text()
    assert "## final_test_accuracy by run" in text
    assert (out / "plots" / "final_test_accuracy_by_run.png").stat().st_size > 1000
    assert "vs" not in text.split("## Runs")[1].split("##")[1]  # no line plot without numbers
