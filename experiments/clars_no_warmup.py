"""Experiment 2: "Large batch training does not need warmup" (CLARS, Huo et al. 2020).

Claim: at large batch sizes CLARS without warmup trains as well as or better than LARS
with gradual warmup (and better than LARS without warmup), because its per-example-norm
denominator damps the early steps by itself.

Design (fixed before the main runs):

1. Probes: a few short single-seed runs of LARS with and without warmup in candidate
   regimes (no BatchNorm, a large share of the data per batch, high peak lrs, a deeper
   MLP) to find one where LARS without warmup is hurt. The probes are shown in the report.
2. In the chosen regime, five methods, each with its own 5-point lr grid in 2x steps
   (seed 0), extended by one 2x step while the best is on an edge (bounded; a best still
   on an edge is marked): CLARS without warmup with exact per-example norms, CLARS without
   warmup with per-micro-batch norms, LARS with and without warmup, SGD (momentum) with
   warmup.
3. Three seeds at each method's best lr; seeds pair runs (same initialisation and data
   order), so methods are compared by paired differences with 95% t-intervals.
4. The verdict is computed by :data:`CRITERION` from the rows; if LARS without warmup is
   not worse than LARS with warmup at their best lrs, there is no warmup problem for CLARS
   to fix and the verdict is "inconclusive".

Usage:
  python experiments/clars_no_warmup.py --preset cpu
  python experiments/clars_no_warmup.py --preset full
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from experiments import harness  # noqa: E402
from experiments.evidence import Criterion, best_on_grid, describe_difference, paired  # noqa: E402
from lars_jax.runs.report import Section, write_report  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "clars_no_warmup"
# "as good as" = the paired difference's interval does not reach below -MARGIN_PP points
MARGIN_PP = 1.0
WARMUP_FRACTION = 0.25
MICRO_BATCHES = 8
MAX_EXTENSIONS = 2  # per side and method: the grid may grow by up to 4x each way
SEEDS = {"smoke": [0], "cpu": [0, 1, 2], "full": [0, 1, 2]}

CLARS_EX = "CLARS (per example), no warmup"
CLARS_MB = "CLARS (per micro-batch), no warmup"
LARS_WU = "LARS, warmup"
LARS_NW = "LARS, no warmup"
SGD_WU = "SGD, warmup"
METHODS = (CLARS_EX, CLARS_MB, LARS_WU, LARS_NW, SGD_WU)
# base learning rates (at base_batch_size 256, scaled linearly to the batch): each
# method's own grid, 2x steps. CLARS divides by the mean per-example gradient norm, which
# exceeds the batch-gradient norm by the noise, so its grid sits higher.
LR_GRID = {
    "smoke": {CLARS_EX: [1.0]},
    "cpu": {CLARS_EX: [0.5, 1.0, 2.0, 4.0, 8.0], CLARS_MB: [0.25, 0.5, 1.0, 2.0, 4.0],
            LARS_WU: [0.0625, 0.125, 0.25, 0.5, 1.0], LARS_NW: [0.0625, 0.125, 0.25, 0.5, 1.0],
            SGD_WU: [0.025, 0.05, 0.1, 0.2, 0.4]},
    "full": {CLARS_EX: [0.5, 1.0, 2.0, 4.0, 8.0], CLARS_MB: [0.5, 1.0, 2.0, 4.0, 8.0],
             LARS_WU: [0.25, 0.5, 1.0, 2.0, 4.0], LARS_NW: [0.25, 0.5, 1.0, 2.0, 4.0],
             SGD_WU: [0.025, 0.05, 0.1, 0.2, 0.4]},
}


def base_config(preset: str) -> TrainConfig:
    common = dict(dtype="float32", trust_coefficient=0.001,
                  base_batch_size=256, lr_scaling="linear", momentum=0.9,
                  weight_decay=5e-4, schedule="cosine", checkpoint_every_steps=-1,
                  plot=False, progress=False, optimizer="lars")
    if preset == "full":
        return TrainConfig(model="resnet20", dataset="cifar10", epochs=30, batch_size=8192,
                           eval_every_epochs=1, log_every_steps=1, **common)
    if preset == "smoke":
        return TrainConfig(model="resnet8", width=0.25, dataset="fashion_mnist",
                           train_subset=128, test_subset=128, epochs=1, batch_size=64,
                           eval_every_epochs=0, crop_padding=0, flip=False, num_devices=1,
                           log_every_steps=1, **common)
    # the regime the probes found (see PROBES): an MLP without normalisation, half of 8192
    # Fashion-MNIST images per batch (2 steps per epoch), 12 epochs = 24 steps
    return TrainConfig(model="mlp2", width=1.0, norm="none", dataset="fashion_mnist",
                       train_subset=8192, epochs=12, batch_size=4096, eval_every_epochs=0,
                       crop_padding=0, flip=False, num_devices=1, log_every_steps=1, **common)


# Probes: folder -> (description, base-config changes, points). LARS only, seed 0.
PROBES: dict[str, dict[str, tuple[str, dict[str, Any], list[float]]]] = {
    "smoke": {},
    "full": {},
    "cpu": {
        "A": ("mlp2, no BN, high lrs", {}, [2.0, 8.0, 32.0]),
        "B": ("mlp2, no BN", {}, [0.25, 0.5, 1.0]),
        "C": ("mlp2 with BN", {"norm": "batch"}, [4.0, 16.0, 64.0]),
        "D": ("mlp4 (4 hidden layers), no BN", {"model": "mlp4"}, [0.125, 0.25, 0.5, 1.0]),
        "E": ("mlp2, no BN, full batch 8192 (12 steps)", {"batch_size": 8192},
              [0.125, 0.25, 0.5, 1.0]),
        "F": ("mlp2, no BN, all 60000 images, 6 epochs (84 steps)",
              {"train_subset": None, "epochs": 6}, [0.25, 0.5, 1.0, 2.0]),
    },
}


def probe_points(base: TrainConfig, lrs: Sequence[float]) -> list[dict[str, Any]]:
    warm = round(WARMUP_FRACTION * base.epochs, 6)
    return [{"learning_rate": lr, "warmup_epochs": w} for lr in lrs for w in (0.0, warm)]


def method_overrides(label: str, base: TrainConfig) -> dict[str, Any]:
    warm = round(WARMUP_FRACTION * base.epochs, 6)
    if label == CLARS_EX:
        return {"optimizer": "clars", "warmup_epochs": 0.0, "clars_granularity": "example",
                "grad_accum_steps": 1}
    if label == CLARS_MB:
        return {"optimizer": "clars", "warmup_epochs": 0.0, "clars_granularity": "micro_batch",
                "grad_accum_steps": MICRO_BATCHES}
    if label == LARS_WU:
        return {"optimizer": "lars", "warmup_epochs": warm, "grad_accum_steps": 1}
    if label == LARS_NW:
        return {"optimizer": "lars", "warmup_epochs": 0.0, "grad_accum_steps": 1}
    if label == SGD_WU:
        return {"optimizer": "sgd", "warmup_epochs": warm, "grad_accum_steps": 1}
    raise ValueError(f"method: unknown {label!r}; expected one of {METHODS}")


def method_point(label: str, base: TrainConfig, lr: float, seed: int) -> dict[str, Any]:
    return {**method_overrides(label, base), "learning_rate": lr, "seed": seed}


def points(preset: str, base: TrainConfig,
           grid: Mapping[str, Sequence[float]] | None = None,
           seeds_at: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """The main runs: every method's grid at seed 0, then the other seeds at ``seeds_at``."""
    grid = grid if grid is not None else LR_GRID[preset]
    pts = [method_point(m, base, lr, SEEDS[preset][0]) for m in METHODS if m in grid
           for lr in sorted(grid[m])]
    for m, lr in (seeds_at or {}).items():
        pts += [method_point(m, base, lr, s) for s in SEEDS[preset][1:]]
    return pts


# ------------------------------------------------------------------ rows


def method_of(c: Mapping[str, Any]) -> str | None:
    if c["optimizer"] == "clars":
        return CLARS_MB if c.get("clars_granularity") == "micro_batch" else CLARS_EX
    if c["optimizer"] == "lars":
        return LARS_WU if c["warmup_epochs"] > 0 else LARS_NW
    if c["optimizer"] == "sgd" and c["warmup_epochs"] > 0:
        return SGD_WU
    return None


def records(rows: Sequence[Mapping[str, Any]], runs_dir: Path,
            regime: str = "main") -> list[dict[str, Any]]:
    """One flat record per finished run, with its per-step training-loss curve."""
    out = []
    for r in rows:
        oc = harness.outcome(r)
        if oc == "unfinished":
            continue
        c = harness.config_of(r)
        acc = harness.final_accuracy(r)
        train = [m for m in harness.read_metrics(r, runs_dir) if m.get("kind") == "train"]
        loss = (r.get("summary") or {}).get("train_loss") if oc == "ok" else None
        out.append({"regime": regime, "method": method_of(c), "learning_rate": c["learning_rate"],
                    "warmup_epochs": c["warmup_epochs"], "seed": int(c["seed"]),
                    "outcome": oc, "test_accuracy": acc if math.isfinite(acc) else None,
                    "final_train_loss": loss if loss is not None and math.isfinite(loss)
                    else None,
                    "curve_step": [m["step"] for m in train],
                    "curve_train_loss": [m.get("loss") if m.get("loss") is not None
                                         and math.isfinite(m["loss"]) else None
                                         for m in train],
                    "time_s": r.get("time_s")})
    return out


def _acc(r: Mapping[str, Any]) -> float:
    a = r.get("test_accuracy")
    return float(a) if a is not None else math.nan


def grid_scores(rows: Sequence[Mapping[str, Any]], method: str,
                seed: int = 0) -> dict[float, float]:
    """lr -> final test accuracy of ``method`` at ``seed`` (NaN for a diverged run)."""
    return {r["learning_rate"]: _acc(r) for r in rows
            if r["regime"] == "main" and r["method"] == method and r["seed"] == seed}


def best_lrs(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float | None, str | None]]:
    return {m: best_on_grid(grid_scores(rows, m)) for m in METHODS if grid_scores(rows, m)}


def by_seed(rows: Sequence[Mapping[str, Any]], method: str, lr: float) -> dict[int, float]:
    return {r["seed"]: _acc(r) for r in rows if r["regime"] == "main" and r["method"] == method
            and math.isclose(r["learning_rate"], lr, rel_tol=1e-9)}


# ------------------------------------------------------------------ criterion


def decide(rows: Sequence[Mapping[str, Any]]):
    best = best_lrs(rows)
    need = (LARS_WU, LARS_NW, CLARS_EX)
    if any(best.get(m, (None, None))[0] is None for m in need):
        return "inconclusive", ["- Not every needed method has a finished run."]
    acc = {m: by_seed(rows, m, best[m][0]) for m in best if best[m][0] is not None}
    lines = []
    for m in METHODS:
        if m in acc:
            lr, edge = best[m]
            vals = [100 * v for v in acc[m].values() if math.isfinite(v)]
            lines.append(f"- {m}: best lr {lr:g}" + (f" (**on the {edge} edge of its grid**)"
                                                     if edge else "")
                         + f"; accuracy at seeds {sorted(acc[m])}: "
                         + ", ".join(f"{v:.2f}" for v in vals) + "%.")
    problem = paired(acc[LARS_WU], acc[LARS_NW])
    lines.append(f"- Warmup problem (LARS with minus without warmup, paired by seed, points): "
                 f"{problem.fmt(100)}, p={problem.p:.3g} -> "
                 f"{describe_difference(problem)}.")
    if not (problem.n >= 2 and problem.lo > 0):
        lines.append("- LARS without warmup is not worse than LARS with warmup here: there "
                     "is no warmup problem for CLARS to fix.")
        verdict = "inconclusive"
    else:
        verdict = None
    sub = {}
    for m in (CLARS_EX, CLARS_MB):
        if m not in acc:
            continue
        vs_wu = paired(acc[m], acc[LARS_WU])
        vs_nw = paired(acc[m], acc[LARS_NW])
        if vs_wu.n >= 2 and vs_wu.lo >= -MARGIN_PP / 100 and vs_nw.lo > 0:
            v = "supported"
        elif vs_wu.n >= 2 and vs_wu.hi < 0 and vs_wu.mean < -MARGIN_PP / 100:
            v = "contradicted"
        else:
            v = "inconclusive"
        sub[m] = v
        lines.append(f"- {m} minus LARS with warmup: {vs_wu.fmt(100)} (p={vs_wu.p:.3g}, "
                     f"{describe_difference(vs_wu, MARGIN_PP / 100)}); minus LARS without "
                     f"warmup: {vs_nw.fmt(100)} (p={vs_nw.p:.3g}, "
                     f"{describe_difference(vs_nw)}) -> "
                     + (v if verdict is None else f"not scored (no warmup problem); this "
                        f"comparison alone would read: {v}") + ".")
    if SGD_WU in acc:
        d = paired(acc[SGD_WU], acc[LARS_WU])
        lines.append(f"- SGD with warmup minus LARS with warmup: {d.fmt(100)} "
                     f"({describe_difference(d)}).")
    if verdict is None:
        verdict = sub.get(CLARS_EX, "inconclusive")
    return verdict, lines


CRITERION = Criterion(
    claim=("CLARS without warmup trains large batches as well as or better than LARS with "
           "gradual warmup, and better than LARS without warmup (Huo, Gu, Huang 2020, "
           "arXiv 2002.01576)."),
    rule=(f"Each method's best lr is the best final test accuracy of seed 0 on its own grid; "
          f"seeds {SEEDS['cpu']} at that lr; differences are paired by seed with 95% "
          f"t-intervals. Precondition: LARS with warmup minus LARS without warmup has an "
          f"interval above 0 (a warmup problem exists); otherwise the verdict is "
          f"inconclusive (no warmup problem to fix). Then, for CLARS with per-example norms "
          f"(the verdict; per-micro-batch norms are reported the same way): supported when "
          f"CLARS minus LARS+warmup has an interval whose lower end is >= -{MARGIN_PP:g} "
          f"point and CLARS minus LARS-without-warmup has an interval above 0; contradicted "
          f"when CLARS minus LARS+warmup has an interval below 0 and a mean below "
          f"-{MARGIN_PP:g} point; otherwise inconclusive."),
    decide=decide,
)


# ------------------------------------------------------------------ running


def _bounds(preset: str, method: str) -> tuple[float, float]:
    g = LR_GRID[preset][method]
    return min(g) / 2 ** MAX_EXTENSIONS * (1 - 1e-9), max(g) * 2 ** MAX_EXTENSIONS * (1 + 1e-9)


def run_all(preset: str, base: TrainConfig, out: Path, report_only: bool,
            max_minutes: float | None):
    t0 = time.perf_counter()

    def left() -> float | None:
        return None if max_minutes is None else max_minutes - (time.perf_counter() - t0) / 60

    def run(b: TrainConfig, pts: list[dict], folder: Path) -> list[dict]:
        rem = left()
        return harness.run_or_load(b, pts, folder, max_minutes=rem,
                              report_only=report_only or (rem is not None and rem <= 0))

    probe_recs = []
    for key, (desc, changes, lrs) in PROBES[preset].items():
        pb = dataclasses.replace(base, **changes)
        folder = out / "probes" / key
        rows = run(pb, probe_points(pb, lrs), folder)
        for r in records(rows, folder, regime=key):
            probe_recs.append({**r, "probe": desc})
    from experiments.evidence import next_grid_point

    grid = {m: list(v) for m, v in LR_GRID[preset].items()}
    rows: list[dict] = []
    for _ in range(2 * MAX_EXTENSIONS + 1):
        rows = run(base, points(preset, base, grid), out / "runs")
        recs = records(rows, out / "runs")
        added = False
        for m in grid:
            if preset == "smoke":
                break
            nxt = next_grid_point(grid_scores(recs, m), bounds=_bounds(preset, m))
            if nxt is not None and all(not math.isclose(nxt, g) for g in grid[m]):
                grid[m].append(nxt)
                added = True
        if not added:
            break
    recs = records(rows, out / "runs")
    seeds_at = {m: lr for m, (lr, _) in best_lrs(recs).items() if lr is not None}
    rows = run(base, points(preset, base, grid, seeds_at), out / "runs")
    return rows, records(rows, out / "runs"), probe_recs, grid


# ------------------------------------------------------------------ report


def _mean_curve(recs: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    cs = [(r["curve_step"], r["curve_train_loss"]) for r in recs if r["curve_step"]]
    if not cs:
        return [], []
    n = min(len(c[0]) for c in cs)
    ys = np.array([[np.nan if v is None else v for v in c[1][:n]] for c in cs], float)
    return list(cs[0][0][:n]), np.nanmean(ys, axis=0).tolist() if ys.size else []


def _plot_probes(preset: str, probe_recs: list[dict], out: Path) -> list[Path]:
    """Probes: final accuracy vs lr, with and without warmup, one line per regime."""
    images: list[Path] = []
    if probe_recs:
        lines = []
        colors = ["C0", "C1", "C2", "C3", "C4"]
        for i, key in enumerate(PROBES[preset]):
            for w, ls in ((0.0, "-"), (None, "--")):
                sel = sorted((r for r in probe_recs if r["regime"] == key
                              and ((r["warmup_epochs"] == 0) == (w == 0.0))),
                             key=lambda r: r["learning_rate"])
                if sel:
                    lines.append({"x": [r["learning_rate"] for r in sel],
                                  "y": [_acc(r) for r in sel], "color": colors[i % 5],
                                  "ls": ls, "marker": "o",
                                  "label": f"{key}: {PROBES[preset][key][0]}, "
                                           f"{'no warmup' if w == 0.0 else 'warmup'}"})
        images.append(harness.plot_styled(out / "probes.png", lines,
                                          xlabel="base lr (at batch 256)",
                                     ylabel="final test accuracy (seed 0)", logx=True,
                                     title="Probes: LARS with (dashed) and without warmup",
                                     hlines={"chance": 0.1}))
    return images


def _plot_grids(base: TrainConfig, recs: list[dict], out: Path) -> list[Path]:
    """Each method's lr grid (seed 0)."""
    images: list[Path] = []
    # lr grids (seed 0)
    lines = []
    for i, m in enumerate(METHODS):
        sc = grid_scores(recs, m)
        if sc:
            xs = sorted(sc)
            lines.append({"x": xs, "y": [sc[x] for x in xs], "marker": "o", "label": m,
                          "color": f"C{i}"})
    if lines:
        images.append(harness.plot_styled(out / "lr_grids.png", lines, xlabel="base lr (at 256)",
                                     ylabel="final test accuracy (seed 0)", logx=True,
                                     title=f"Each method's lr grid, batch {base.batch_size}",
                                     hlines={"chance": 0.1}))
    return images


def _plot_best_curves(base: TrainConfig, recs: list[dict], out: Path) -> list[Path]:
    """Training loss per step at each method's best lr, mean over seeds."""
    images: list[Path] = []
    best = best_lrs(recs)
    # training loss per step at each method's best lr, mean over seeds
    lines = []
    for i, m in enumerate(METHODS):
        lr = best.get(m, (None, None))[0]
        if lr is None:
            continue
        sel = [r for r in recs if r["method"] == m and math.isclose(r["learning_rate"], lr)]
        xs, ys = _mean_curve(sel)
        if xs:
            lines.append({"x": xs, "y": ys, "label": f"{m} (lr {lr:g}, {len(sel)} seeds)",
                          "color": f"C{i}", "ls": "--" if "CLARS" in m else "-"})
    if lines:
        spe = (base.train_subset or 0) // base.batch_size
        images.append(harness.plot_styled(
            out / "curves_best.png", lines, xlabel=f"step ({spe} per epoch)",
            ylabel="training loss (mean over seeds)", logy=True,
            title="First epochs: training loss at each method's best lr",
            hlines={"ln 10 (initial)": math.log(10)}))
    return images


def _plot_lars_warmup(preset: str, recs: list[dict], out: Path) -> list[Path]:
    """The same lr with and without warmup (LARS): the failure the probes looked for."""
    images: list[Path] = []
    # the same lr with and without warmup (LARS): the failure the probes looked for
    lines = []
    for i, lr in enumerate(sorted(set(LR_GRID[preset].get(LARS_NW, [])))):
        for m, ls in ((LARS_NW, "-"), (LARS_WU, "--")):
            sel = [r for r in recs if r["method"] == m and r["seed"] == SEEDS[preset][0]
                   and math.isclose(r["learning_rate"], lr)]
            xs, ys = _mean_curve(sel)
            if xs:
                lines.append({"x": xs, "y": ys, "color": f"C{i}", "ls": ls,
                              "label": f"LARS lr {lr:g}, {'no ' if m == LARS_NW else ''}warmup"})
    if lines:
        images.append(harness.plot_styled(
            out / "curves_lars_warmup.png", lines, xlabel="step", ylabel="training loss",
            logy=True, title="LARS with (dashed) and without warmup, seed 0",
            hlines={"ln 10 (initial)": math.log(10)}, legend_cols=2))

    return images


def _grid_table(recs: list[dict]) -> tuple[list[str], dict[str, Any]]:
    """Per method: the lr grid, the best lr, its edge and the seeds at it."""
    best = best_lrs(recs)
    grid_table = ["| method | lrs run (seed 0) | best lr | on an edge | seeds at best | "
                  "accuracy at best, mean ± std |", "| :-- | :-- | --: | :-- | :-- | :-- |"]
    summary_stats = {}
    for m in METHODS:
        sc = grid_scores(recs, m)
        if not sc:
            continue
        lr, edge = best.get(m, (None, None))
        acc = by_seed(recs, m, lr) if lr is not None else {}
        ms = harness.mean_spread(list(acc.values()))
        summary_stats[m] = {"best_lr": lr, "edge": edge, "by_seed": acc, **ms}
        cells = ", ".join(f"{x:g}: " + (harness.fmt_acc(v) if math.isfinite(v) else "diverged")
                          for x, v in sorted(sc.items()))
        grid_table.append(
            f"| {m} | {cells} | "
            f"{lr if lr is not None else '–'} | {edge or 'no'} | {sorted(acc)} | "
            f"{harness.fmt_pm(ms)} |")
    return grid_table, summary_stats


def _probe_text(preset: str, probe_recs: list[dict]) -> str:
    probe_table = ["| probe | base lr | warmup epochs | final test accuracy | outcome |",
                   "| :-- | --: | --: | --: | :-- |"]
    for r in probe_recs:
        probe_table.append(f"| {r['regime']}: {r['probe']} | {r['learning_rate']:g} | "
                           f"{r['warmup_epochs']:g} | {harness.fmt_acc(_acc(r))} | "
                           f"{r['outcome']} |")
    regime_lines = ["| probe | best without warmup | best with warmup | with minus without |",
                    "| :-- | :-- | :-- | --: |"]
    helped = []
    for key, (desc, _, _) in PROBES[preset].items():
        sel = [r for r in probe_recs if r["regime"] == key]
        nw = {r["learning_rate"]: _acc(r) for r in sel if r["warmup_epochs"] == 0}
        wu = {r["learning_rate"]: _acc(r) for r in sel if r["warmup_epochs"] > 0}
        (lr_n, e_n), (lr_w, e_w) = best_on_grid(nw), best_on_grid(wu)
        if lr_n is None or lr_w is None:
            continue
        d = 100 * (wu[lr_w] - nw[lr_n])
        if d > MARGIN_PP:
            helped.append(key)
        regime_lines.append(
            f"| {key}: {desc} | {harness.fmt_acc(nw[lr_n])} at lr {lr_n:g}"
            + (f" ({e_n} edge)" if e_n else "") + f" | {harness.fmt_acc(wu[lr_w])} at lr {lr_w:g}"
            + (f" ({e_w} edge)" if e_w else "") + f" | {d:+.1f} |")
    probe_text = (
        "**Probes** (LARS, seed 0, 8192 images, 12 epochs, batch 4096, warmup a quarter of "
        "the budget, unless the probe says otherwise; base lrs at batch 256, scaled "
        "linearly): where does LARS without warmup fail? A probe would show a warmup "
        f"problem if the best accuracy with warmup exceeded the best without by more than "
        f"{MARGIN_PP:g} point (single runs). "
        + (f"Probes {', '.join(helped)} do." if helped else
           "None does (warmup raises the accuracy only at some lrs above the best one).")
        + "\n\n" + "\n".join(regime_lines) + "\n\nAll probe runs:\n\n"
        + "\n".join(probe_table) + "\n\n")
    return probe_text


def _setup_text(base: TrainConfig) -> str:
    setup = (
        f"Batch {base.batch_size} of {base.train_subset or 'all'} training images "
        f"({(base.train_subset or 0) // base.batch_size or '?'} steps per epoch), "
        f"{base.epochs:g} epochs; base lrs given at batch {base.base_batch_size} and scaled "
        f"linearly; warmup (when on) {WARMUP_FRACTION:g} of the budget from 0; cosine decay; "
        f"momentum {base.momentum}, weight decay {base.weight_decay}, trust coefficient "
        f"{base.trust_coefficient}. CLARS per example: mean of exact per-example gradient "
        f"norms; per micro-batch: mean of the norms of {MICRO_BATCHES} micro-batch gradients "
        f"(gradient accumulation). The CLARS rule is the project's reading of the paper "
        f"(marked unverified in lars_jax.scale_by_clars_trust_ratio). Biases are excluded "
        f"from the trust ratio and weight decay (lars_jax.default_mask) and take the plain "
        f"lr in LARS and CLARS alike.\n\n"
        + harness.base_config_table(base, ["model", "width", "norm", "dataset", "train_subset",
                                      "batch_size", "epochs", "momentum", "weight_decay",
                                      "trust_coefficient", "denominator"]))
    return setup


def _limits_text(preset: str, rows: list[dict], timer: harness.Timer | None) -> str:
    limits_txt = (
        harness.preset_note(preset) + " "
        + ("Reductions: an MLP without normalisation on 8192 Fashion-MNIST images, batch "
           "4096 (24 steps in all) instead of ResNets on ImageNet at 8k-32k; 3 seeds; "
           "one seed chooses each method's lr and is then reused in the comparison "
           "(a selection bias shared by every method); the probes are single runs on coarse "
           "grids, and in probes C, D and E the best lr is the lowest one probed, so those "
           "probes do not locate LARS's optimum (they show only that warmup does not rescue "
           "the higher lrs enough to beat it); probes A-F were run before the main grid with "
           "the same machinery (the same configs rerun by the script reuse them). The "
           "machine is a loaded 2-core CPU shared with other jobs."
           if preset == "cpu" else "")
        + "\n\n" + harness.run_time_note(rows, timer) + f" Machine: {harness.environment_note()}.")
    return limits_txt


def analyse(preset: str, base: TrainConfig, rows: list[dict], recs: list[dict],
            probe_recs: list[dict], grid: Mapping[str, Sequence[float]], out: Path,
            timer: harness.Timer | None) -> dict:
    with open(out / "rows.jsonl", "w") as f:
        for r in [*probe_recs, *recs]:
            f.write(json.dumps(r) + "\n")
    images = (_plot_probes(preset, probe_recs, out) + _plot_grids(base, recs, out)
              + _plot_best_curves(base, recs, out) + _plot_lars_warmup(preset, recs, out))
    grid_table, summary_stats = _grid_table(recs)
    verdict, details = CRITERION(recs)
    probe_text = _probe_text(preset, probe_recs)
    results = ((probe_text + "**Main comparison** (the regime of probe B: mlp2, no BN).\n\n"
                if probe_recs else "") + "\n".join(grid_table) + "\n")
    write_report(
        out, title="Does large-batch training need warmup? CLARS vs LARS (Huo et al.)",
        intro=("Raw rows: `rows.jsonl` (one per run, probes included, with the training-loss "
               "curve), `runs/results.jsonl`, `probes/*/results.jsonl`."),
        sections=[Section("Setup", _setup_text(base)), Section("Results", results, images),
                  Section("Verdict", CRITERION.section(recs)),
                  Section("Limits of the evidence",
                          _limits_text(preset, rows, timer))])
    acc = {m: st["by_seed"] for m, st in summary_stats.items()}
    diffs = {f"{a} minus {b}": paired(acc[a], acc[b]) for a, b in
             ((LARS_WU, LARS_NW), (CLARS_EX, LARS_WU), (CLARS_EX, LARS_NW),
              (CLARS_MB, LARS_WU), (CLARS_MB, LARS_NW), (SGD_WU, LARS_WU))
             if a in acc and b in acc}
    result = "; ".join(f"{k}: {d.fmt(100)} points" for k, d in diffs.items())
    summary = {"preset": preset, "claim": CRITERION.claim, "criterion": CRITERION.rule,
               "verdict": verdict, "result": result,
               "table": [{"claim": CRITERION.claim, "criterion": CRITERION.rule,
                          "result": result, "verdict": verdict}],
               "paired_differences_points": {k: {f: (100 * getattr(d, f) if f in (
                   "mean", "se", "lo", "hi") else getattr(d, f)) for f in d._fields}
                   for k, d in diffs.items()},
               "details": details, "methods": summary_stats,
               "grids": {m: sorted(v) for m, v in grid.items()},
               "headline": f"{verdict}: " + " ".join(d.lstrip("- ") for d in details
                                                       if "minus" in d or "no warmup problem"
                                                       in d)}
    harness.save_json(summary, out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = harness.experiment_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    # the harness sets up the folder, cache, timer and base and runs the initial lr grids;
    # run_all then adds the probes, the edge extensions and the seeds (resumable: the
    # initial grid is not retrained)
    run = harness.run_experiment(NAME, args, base_config, lambda p, b: points(
        p, b, {m: list(v) for m, v in LR_GRID[p].items()}))
    rows, recs, probe_recs, grid = run_all(args.preset, run.base, run.out, args.report_only,
                                           args.max_minutes)
    return analyse(args.preset, run.base, rows, recs, probe_recs, grid, run.out, run.timer)


if __name__ == "__main__":
    main()
