"""Experiment 4: "Revisiting small batch training" (Masters & Luschi 2018, seed 002).

Claims: with plain SGD (no momentum), the base learning rate ``eta~ = eta / B`` (sum
formulation; holding it fixed is the linear scaling rule) and the same epoch budget for
every batch size, (i) the best test accuracy is reached at small batches (B <= 32; with
BatchNorm at B = 4..8), (ii) the range of base learning rates that trains stably shrinks as
the batch grows, and (iii) BatchNorm works best over 4..8 examples, largely independently of
the SGD batch (here through ghost BN of 4, 8 and 32 examples).

Design (fixed before the run): batches 2..512 in 2x steps; eta~ in 2x steps, starting from
a four-point window and extended one 2x step at a time at each end of each (arm, batch)
cell whose end is still stable, so that both edges of the stable range are measured
(bounded; an edge that hits the bound is marked); two seeds per cell; the stability
criterion :data:`STABLE_FRACTION` below; a long budget (all epochs, lr decayed) and a
short view (the training loss over the second half of the first epoch).

Usage:
  python experiments/small_batch.py --preset cpu
  python experiments/small_batch.py --preset full
"""

from __future__ import annotations

import argparse
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
from experiments.evidence import Criterion, interval, paired  # noqa: E402
from lars_jax.runs.report import Section, write_report  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "small_batch"
# Stability criterion (fixed before the run). A run is *stable* when its loss stays finite
# and its final training loss (mean over the last sixteenth of the run) is below
# STABLE_FRACTION x ln(10), the loss of the uniform prediction over 10 classes that every
# run starts from. Justification: one threshold catches both failure modes of a base lr:
# too large, the loss becomes non-finite or stalls/explodes near or above its initial value;
# too small, the budget ends before the model has removed half of the initial loss. A cell
# (arm, batch, lr) is stable when every seed is.
INITIAL_LOSS = math.log(10.0)
STABLE_FRACTION = 0.5
# Claim (i): "small" batches, as the paper's range (B <= 32; with BN over the batch, 4..8).
SMALL_MAX = 32
BN_BEST = (4, 8)

SEEDS = {"smoke": [0], "cpu": [0, 1], "full": [0, 1]}
BATCH_SIZES = {"smoke": [16], "cpu": [2, 4, 8, 16, 32, 64, 128, 256, 512],
               "full": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]}
# BN arms: "bn" normalises over the whole batch; "ghostG" over groups of G examples (at
# B <= G it is the "bn" run). Ghost arms only at a few SGD batches (CPU time).
GHOST_SIZES = (4, 8, 32)
GHOST_BATCHES = {"smoke": [], "cpu": [64, 512], "full": [64, 256, 1024]}
ARMS = ("none", "bn", "ghost4", "ghost8", "ghost32")
INITIAL_LOG2_LR = {"smoke": [-6], "cpu": [-12, -11, -10, -9], "full": [-12, -11, -10, -9]}
LOG2_LR_BOUNDS = {"smoke": (-6, -6), "cpu": (-18, 0), "full": (-18, 0)}
MAX_ROUNDS = {"smoke": 1, "cpu": 12, "full": 12}
LOG_WINDOWS = 16  # training-loss rows per run (the last one is the final training loss)


def base_config(preset: str) -> TrainConfig:
    # lr_scaling=linear with base_batch_size=1: learning_rate is eta~ and the mean-loss
    # rate is eta~ * B (the sum formulation of the paper).
    common = dict(dtype="float32", trust_coefficient=0.001,
                  optimizer="sgd", momentum=0.0, base_batch_size=1, lr_scaling="linear",
                  weight_decay=1e-4, warmup_epochs=0.0, checkpoint_every_steps=-1,
                  plot=False, progress=False)
    if preset == "full":  # 82 epochs, /10 at 50% and 75% as in the paper
        return TrainConfig(model="resnet20", dataset="cifar10", epochs=82, schedule="step",
                           eval_every_epochs=0, log_every_steps=50, **common)
    if preset == "smoke":
        return TrainConfig(model="resnet8", width=0.25, dataset="fashion_mnist",
                           train_subset=64, test_subset=128, epochs=1, schedule="step",
                           eval_every_epochs=0, crop_padding=0, flip=False, num_devices=1,
                           log_every_steps=8, **common)
    # an MLP (BN or no normalization), 1024 training images, 8 epochs: 4096 steps at B=2
    return TrainConfig(model="mlp2", width=1.0, dataset="fashion_mnist", train_subset=1024,
                       epochs=8, schedule="step", eval_every_epochs=0, crop_padding=0,
                       flip=False, num_devices=1, log_every_steps=64, **common)


def arm_batches(preset: str, arm: str) -> list[int]:
    """The SGD batch sizes an arm is run at."""
    return BATCH_SIZES[preset] if arm in ("none", "bn") else [
        b for b in GHOST_BATCHES[preset] if b in BATCH_SIZES[preset]]


def canonical_arm(arm: str, batch: int) -> str:
    """Ghost BN over G >= B examples is BN over the batch: such cells share the "bn" run."""
    if arm.startswith("ghost") and int(arm[5:]) >= batch:
        return "bn"
    return arm


def arm_overrides(arm: str) -> dict[str, Any]:
    if arm == "none":
        return {"norm": "none"}
    if arm == "bn":
        return {"norm": "batch", "bn_span": "device"}
    if arm.startswith("ghost"):
        return {"norm": "batch", "bn_span": "ghost", "bn_ghost_size": int(arm[5:])}
    raise ValueError(f"arm: unknown {arm!r}; expected one of {ARMS}")


def cells(preset: str) -> list[tuple[str, int]]:
    """(arm, batch) cells with their own runs, in priority order."""
    out = []
    for arm in ARMS:
        if arm != "none" and preset == "smoke":
            continue
        for b in arm_batches(preset, arm):
            if canonical_arm(arm, b) == arm:
                out.append((arm, b))
    return out


def initial_grid(preset: str) -> dict[tuple[str, int], set[int]]:
    return {c: set(INITIAL_LOG2_LR[preset]) for c in cells(preset)}


def run_point(preset: str, base: TrainConfig, arm: str, batch: int, e: int,
              seed: int) -> dict[str, Any]:
    steps = max(1, (base.train_subset or 50000) * int(base.epochs) // batch)
    log_every = max(1, steps // LOG_WINDOWS)
    return {**arm_overrides(arm), "batch_size": batch, "learning_rate": 2.0 ** e,
            "seed": seed, "log_every_steps": log_every, "steps_per_call": min(16, log_every)}


def points(preset: str, grid: Mapping[tuple[str, int], set[int]] | None = None,
           base: TrainConfig | None = None) -> list[dict[str, Any]]:
    """Run points of a grid (default: the initial one), cells in priority order."""
    base = base or base_config(preset)
    grid = grid if grid is not None else initial_grid(preset)
    return [run_point(preset, base, arm, b, e, s) for (arm, b) in cells(preset)
            if (arm, b) in grid for e in sorted(grid[(arm, b)]) for s in SEEDS[preset]]


# ------------------------------------------------------------------ reading runs


def _arm_of(c: Mapping[str, Any]) -> str:
    if c["norm"] == "none":
        return "none"
    return f"ghost{c['bn_ghost_size']}" if c.get("bn_span") == "ghost" else "bn"


def run_records(rows: Sequence[Mapping[str, Any]], runs_dir: Path) -> list[dict[str, Any]]:
    """One flat record per run: arm, batch, log2 lr, seed, outcome and the losses."""
    recs = []
    for r in rows:
        c = harness.config_of(r)
        oc = harness.outcome(r)
        if oc == "unfinished":
            continue
        summary = r.get("summary") or {}
        final_loss = summary.get("train_loss") if oc == "ok" else math.inf
        if final_loss is None or not math.isfinite(final_loss):
            final_loss = math.inf
        train = [m for m in harness.read_metrics(r, runs_dir) if m.get("kind") == "train"]
        early = [m for m in train if m.get("epoch", 9e9) <= 1.0 + 1e-9]
        early_loss = early[-1].get("loss") if early else math.inf
        if early_loss is None or not math.isfinite(early_loss):
            early_loss = math.inf
        acc = harness.final_accuracy(r)
        recs.append({"arm": _arm_of(c), "batch_size": int(c["batch_size"]),
                     "log2_lr": int(round(math.log2(c["learning_rate"]))),
                     "seed": int(c["seed"]), "outcome": oc,
                     "final_train_loss": final_loss, "epoch1_train_loss": early_loss,
                     "test_accuracy": acc if math.isfinite(acc) else None,
                     "time_s": r.get("time_s")})
    return recs


def stable(loss: float | None) -> bool:
    return loss is not None and math.isfinite(loss) and loss < STABLE_FRACTION * INITIAL_LOSS


def cell_table(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int],
               budget: str = "final") -> dict[tuple[str, int, int], dict[str, Any]]:
    """(arm, batch, log2 lr) -> stability (None until every seed finished), mean accuracy."""
    key_loss = "final_train_loss" if budget == "final" else "epoch1_train_loss"
    by: dict[tuple[str, int, int], dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["arm"], r["batch_size"], r["log2_lr"]), {})[r["seed"]] = r
    out = {}
    for k, per_seed in by.items():
        done = all(s in per_seed for s in seeds)
        losses = {s: per_seed[s][key_loss] for s in per_seed}
        accs = {s: per_seed[s]["test_accuracy"] for s in per_seed}
        fin = [a for a in accs.values() if a is not None]
        out[k] = {"stable": (all(stable(v) for v in losses.values()) if done else None),
                  "diverged": any(per_seed[s]["outcome"] == "diverged" for s in per_seed),
                  "accuracy": (float(np.mean(fin)) if done and len(fin) == len(accs)
                               else math.nan),
                  "accuracy_by_seed": accs, "loss_by_seed": losses}
    return out


def extend(grid: dict[tuple[str, int], set[int]], table: Mapping[tuple[str, int, int], Any],
           bounds: tuple[int, int]) -> bool:
    """Adds one 2x step at each end of a cell whose end is still stable; True if any.

    A cell with no stable lr at all is extended upwards when none of its runs diverged
    (every lr too small) and downwards when all of them diverged.
    """
    changed = False
    for (arm, b), es in grid.items():
        lo, hi = min(es), max(es)
        st = {e: table.get((arm, b, e), {}).get("stable") for e in es}
        if any(v is None for v in st.values()):
            continue  # not finished: decide next round
        add = []
        if any(st.values()):
            if st[hi]:
                add.append(hi + 1)
            if st[lo]:
                add.append(lo - 1)
        else:
            div = [table[(arm, b, e)]["diverged"] for e in es]
            if not any(div):
                add.append(hi + 1)
            elif all(div):
                add.append(lo - 1)
        for e in add:
            if bounds[0] <= e <= bounds[1] and e not in es:
                es.add(e)
                changed = True
    return changed


def stable_range(grid_es: set[int], table: Mapping[tuple[str, int, int], Any], arm: str,
                 b: int, bounds: tuple[int, int]) -> dict[str, Any]:
    """The stable lrs of a cell, their count, and whether both edges were measured."""
    es = sorted(grid_es)
    st = [e for e in es if table.get((arm, b, e), {}).get("stable")]
    if not st:
        return {"stable": [], "width": 0, "edges_measured": all(
            table.get((arm, b, e), {}).get("stable") is not None for e in es)}
    lo_ok = min(st) - 1 in es and table.get((arm, b, min(st) - 1), {}).get("stable") is False
    hi_ok = max(st) + 1 in es and table.get((arm, b, max(st) + 1), {}).get("stable") is False
    return {"stable": st, "width": len(st), "edges_measured": bool(lo_ok and hi_ok),
            "contiguous": st == list(range(min(st), max(st) + 1))}


def best_cell(table: Mapping[tuple[str, int, int], Any], arm: str,
              b: int) -> tuple[int | None, float]:
    """The lr with the highest seed-mean accuracy among the *stable* lrs of a cell."""
    cand = {e: v["accuracy"] for (a, bb, e), v in table.items()
            if a == arm and bb == b and v.get("stable") and math.isfinite(v["accuracy"])}
    if not cand:
        return None, math.nan
    e = max(cand, key=cand.get)
    return e, cand[e]


# ------------------------------------------------------------------ criteria


def _tables(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int] | None = None):
    seeds = seeds if seeds is not None else sorted({r["seed"] for r in rows})
    return cell_table(rows, seeds, "final"), seeds


def _best_per_batch(table, arm: str) -> dict[int, tuple[int, float]]:
    bs = sorted({b for (a, b, _) in table if a == arm})
    out = {}
    for b in bs:
        e, acc = best_cell(table, arm, b)
        if e is not None:
            out[b] = (e, acc)
    return out


def _small_vs_large(rows: Sequence[Mapping[str, Any]], arm: str, small: tuple[int, int],
                    label: str) -> tuple[str, list[str]]:
    table, _ = _tables([r for r in rows if r["arm"] == arm])
    best = _best_per_batch(table, arm)
    if not best:
        return "inconclusive", [f"- {label}: no stable cell."]
    inside = {b: v for b, v in best.items() if small[0] <= b <= small[1]}
    outside = {b: v for b, v in best.items() if not small[0] <= b <= small[1]}
    b_star = max(best, key=lambda b: best[b][1])
    if not inside or not outside:
        return "inconclusive", [f"- {label}: batches on one side only ({sorted(best)})."]
    bi = max(inside, key=lambda b: inside[b][1])
    bo = max(outside, key=lambda b: outside[b][1])
    d = paired(table[(arm, bi, inside[bi][0])]["accuracy_by_seed"],
               table[(arm, bo, outside[bo][0])]["accuracy_by_seed"])
    lines = [f"- {label}: best batch **{b_star}** ({100 * best[b_star][1]:.2f}%, lr 2^"
             f"{best[b_star][0]}); best inside {small[0]}..{small[1]}: B={bi} "
             f"({100 * inside[bi][1]:.2f}%) vs best outside: B={bo} "
             f"({100 * outside[bo][1]:.2f}%); paired difference over seeds (points) "
             f"{d.fmt(100)}, p={d.p:.3g}."]
    if d.n >= 2 and d.lo > 0 and small[0] <= b_star <= small[1]:
        return "supported", lines
    if d.n >= 2 and d.hi < 0:
        return "contradicted", lines
    return "inconclusive", lines


def _combine(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    if "contradicted" in verdicts:
        return "contradicted"
    return "inconclusive"


def decide_best_small(rows: Sequence[Mapping[str, Any]]):
    v1, l1 = _small_vs_large(rows, "none", (1, SMALL_MAX), "no normalisation, B <= 32")
    v2, l2 = _small_vs_large(rows, "bn", BN_BEST, "BN over the batch, B = 4..8")
    return _combine([v1, v2]), [*l1, f"  -> {v1}", *l2, f"  -> {v2}"]


CRITERION_BEST = Criterion(
    claim=("(i) With plain SGD, eta~ = eta/B and the same epoch budget, the best test "
           "accuracy is reached at small batches: B <= 32 without normalisation, B = 4..8 "
           "with BatchNorm over the batch (Masters & Luschi 2018)."),
    rule=("Per arm and batch, the best lr is the stable lr with the highest seed-mean final "
          "test accuracy. Take the best batch inside the claimed range and the best outside "
          "it and form the paired (by seed) accuracy difference with its 95% t-interval. "
          "Per arm: supported when the overall best batch is inside the range and the "
          "interval lies above 0; contradicted when the interval lies below 0; otherwise "
          "inconclusive. The claim is supported when both arms support it, contradicted "
          "when either contradicts it."),
    decide=decide_best_small,
)


def _widths(rows, arm: str, budget: str) -> tuple[dict[int, int], list[int]]:
    seeds = sorted({r["seed"] for r in rows})
    table = cell_table([r for r in rows if r["arm"] == arm], seeds, budget)
    bs = sorted({b for (a, b, _) in table if a == arm})
    widths, unmeasured = {}, []
    for b in bs:
        es = {e for (a, bb, e) in table if a == arm and bb == b}
        sr = stable_range(es, table, arm, b, (-99, 99))
        widths[b] = sr["width"]
        if not sr["edges_measured"]:
            unmeasured.append(b)
    return widths, unmeasured


def decide_shrinks(rows: Sequence[Mapping[str, Any]]):
    from scipy import stats

    verdicts, lines = [], []
    for arm in ("none", "bn"):
        widths, unmeasured = _widths(rows, arm, "final")
        if len(widths) < 3:
            verdicts.append("inconclusive")
            lines.append(f"- {arm}: fewer than 3 batch sizes.")
            continue
        bs = sorted(widths)
        tau, p = stats.kendalltau(np.log2(bs), [widths[b] for b in bs])
        w_small, w_large = widths[bs[0]], widths[bs[-1]]
        if unmeasured:
            v = "inconclusive"
        elif w_large <= w_small - 2 and tau < 0 and p < 0.05:
            v = "supported"
        elif w_large >= w_small:
            v = "contradicted"
        else:
            v = "inconclusive"
        verdicts.append(v)
        lines.append(
            f"- {arm}: number of stable 2x lr steps per batch "
            f"{', '.join(f'{b}: {widths[b]}' for b in bs)}; B={bs[-1]} vs B={bs[0]}: "
            f"{w_large} vs {w_small}; Kendall tau(log B, width) = {tau:+.2f} (p={p:.3g})"
            + (f"; an edge not measured at B={unmeasured}" if unmeasured else "")
            + f" -> {v}")
    return _combine(verdicts), lines


CRITERION_SHRINKS = Criterion(
    claim=("(ii) The range of base learning rates eta~ that trains stably shrinks as the "
           "batch grows (Masters & Luschi 2018)."),
    rule=(f"A run is stable when its loss stays finite and its final training loss is below "
          f"{STABLE_FRACTION:g} x ln 10 (half the loss of the initial uniform prediction); a "
          f"cell when every seed is. Width = number of stable lrs (2x steps) per batch. Per "
          f"arm (no normalisation; BN over the batch): supported when both edges are "
          f"measured at every batch, the width at the largest batch is at least 2 steps "
          f"(4x) below the width at the smallest, and Kendall's tau between log B and the "
          f"width is negative with p < 0.05; contradicted when the largest batch is at "
          f"least as wide as the smallest; otherwise inconclusive. Supported when both "
          f"arms support it, contradicted when either contradicts it."),
    decide=decide_shrinks,
)


def decide_bn_size(rows: Sequence[Mapping[str, Any]]):
    seeds = sorted({r["seed"] for r in rows})
    table = cell_table(rows, seeds, "final")
    batches = sorted({r["batch_size"] for r in rows if r["arm"].startswith("ghost")})
    diffs, lines, per_b_best = [], [], []
    for b in batches:
        arms = {f"ghost{g}" if g < b else "bn": g for g in GHOST_SIZES}
        arms["bn"] = b
        best = {}
        for arm, g in arms.items():
            e, acc = best_cell(table, arm, b)
            if e is not None:
                best[g] = (arm, e, acc)
        if not best:
            lines.append(f"- SGD batch {b}: no stable cell.")
            continue
        g_star = max(best, key=lambda g: best[g][2])
        per_b_best.append(g_star)
        small = {g: v for g, v in best.items() if g in BN_BEST}
        large = {g: v for g, v in best.items() if g not in BN_BEST}
        text = ", ".join(f"BN over {g}: {100 * v[2]:.2f}% (lr 2^{v[1]})"
                         for g, v in sorted(best.items()))
        if small and large:
            gs = max(small, key=lambda g: small[g][2])
            gl = max(large, key=lambda g: large[g][2])
            a_s = table[(small[gs][0], b, small[gs][1])]["accuracy_by_seed"]
            a_l = table[(large[gl][0], b, large[gl][1])]["accuracy_by_seed"]
            diffs += [a_s[s] - a_l[s] for s in a_s if s in a_l
                      and a_s[s] is not None and a_l[s] is not None]
            text += f"; best of 4/8 ({gs}) minus best of larger ({gl})"
        lines.append(f"- SGD batch {b}: {text}; best: BN over **{g_star}**.")
    if not diffs:
        return "inconclusive", lines or ["- no ghost-BN cell finished."]
    d = interval(diffs)
    lines.append(f"- Pooled paired difference (best of BN over 4/8 minus best of BN over "
                 f"32/B, every batch and seed), points: {d.fmt(100)}, p={d.p:.3g}.")
    if d.lo > 0 and all(g in BN_BEST for g in per_b_best):
        return "supported", lines
    if d.hi < 0:
        return "contradicted", lines
    return "inconclusive", lines


CRITERION_BN = Criterion(
    claim=("(iii) BatchNorm works best over 4..8 examples, largely independently of the "
           "SGD batch (Masters & Luschi 2018)."),
    rule=("At each SGD batch with ghost-BN arms, the best (stable, seed-mean) accuracy of "
          "BN over 4, 8, 32 examples and over the whole batch. Supported when BN over 4 or "
          "8 is best at every such batch and the pooled paired difference (best of 4/8 "
          "minus best of 32/whole batch, over batches and seeds) has a 95% t-interval "
          "above 0; contradicted when that interval lies below 0; otherwise inconclusive."),
    decide=decide_bn_size,
)
CRITERIA = {"best_small": CRITERION_BEST, "stable_range_shrinks": CRITERION_SHRINKS,
            "bn_over_4_8": CRITERION_BN}


# ------------------------------------------------------------------ report


def _heatmap(out: Path, table, grid, arm: str, batches: Sequence[int], title: str,
             budget_label: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    es_all = sorted({e for (a, _), es in grid.items() if a == arm for e in es})
    if not es_all:
        es_all = [0]
    rows_e = list(reversed(range(min(es_all), max(es_all) + 1)))
    vals = np.full((len(rows_e), len(batches)), np.nan)
    fig = Figure(figsize=(1.0 + 0.75 * len(batches), 1.2 + 0.36 * len(rows_e)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, e in enumerate(rows_e):
        for j, b in enumerate(batches):
            v = table.get((canonical_arm(arm, b), b, e))
            if v is not None and math.isfinite(v["accuracy"]):
                vals[i, j] = v["accuracy"]
    fin = vals[np.isfinite(vals)]
    im = ax.imshow(vals, cmap="viridis", aspect="auto",
                   vmin=float(fin.min()) if fin.size else 0.0,
                   vmax=float(fin.max()) if fin.size else 1.0)
    for i, e in enumerate(rows_e):
        for j, b in enumerate(batches):
            v = table.get((canonical_arm(arm, b), b, e))
            if v is None:
                txt, color = "", "black"
            elif v["stable"] is None:
                txt, color = "…", "black"
            elif v["diverged"]:
                txt, color = "div", "red"
            elif not v["stable"]:
                txt = f"{v['accuracy']:.2f}\nunst" if math.isfinite(v["accuracy"]) else "unst"
                color = "red"
            else:
                txt, color = f"{v['accuracy']:.2f}", ("black" if im.norm(v["accuracy"]) > 0.6
                                                      else "white")
            ax.text(j, i, txt, ha="center", va="center", fontsize=6.5, color=color,
                    fontweight="bold" if color == "red" else "normal")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_yticks(range(len(rows_e)), [f"2^{e}" for e in rows_e])
    ax.set(xlabel="batch size B", ylabel="base lr eta~ = eta/B", title=title)
    fig.colorbar(im, ax=ax, label=f"seed-mean test accuracy ({budget_label})")
    fig.savefig(out, dpi=110)
    return out


def _stability_tables(preset: str, base: TrainConfig, recs: list[dict], out: Path,
                      grid: dict[tuple[str, int], set[int]], summary: dict[str, Any]
                      ) -> tuple[list[str], list[Path]]:
    """The stable-range table and heatmaps per budget (final, short view); fills
    ``summary["cells"]``."""
    seeds, bounds = SEEDS[preset], LOG2_LR_BOUNDS[preset]
    images: list[Path] = []
    results = []
    for budget, label in (("final", f"after {base.epochs:g} epochs"),
                          ("epoch1", "short view: training loss in epoch 0.5-1")):
        table = cell_table(recs, seeds, budget)
        lines = [f"\n**Budget: {label}.** Stable lrs (2x steps) per batch; the best lr is "
                 f"the stable one with the highest seed-mean final test accuracy.\n",
                 "| arm | batch | lrs run | stable lrs | width | both edges measured | best lr | "
                 "best accuracy (seed mean) |", "| :-- | --: | :-- | :-- | --: | :-- | :-- | --: |"]
        for arm, b in cells(preset):
            es = grid.get((arm, b), set())
            sr = stable_range(es, table, arm, b, bounds)
            e_best, acc = best_cell(table, arm, b)
            at_bound = sr["stable"] and (min(sr["stable"]) <= bounds[0]
                                         or max(sr["stable"]) >= bounds[1])
            rng = (f"2^{min(sr['stable'])}..2^{max(sr['stable'])}" if sr["stable"] else "none")
            lines.append(
                f"| {arm} | {b} | 2^{min(es)}..2^{max(es)} ({len(es)}) | {rng} | {sr['width']} "
                f"| {'yes' if sr['edges_measured'] else ('no (grid bound)' if at_bound else 'no')}"
                f" | {f'2^{e_best}' if e_best is not None else '–'} | "
                f"{harness.fmt_acc(acc)} |")
            if budget == "final":
                summary["cells"][f"{arm}/{b}"] = {
                    "log2_lrs_run": sorted(es), "stable_log2_lrs": sr["stable"],
                    "width": sr["width"], "edges_measured": sr["edges_measured"],
                    "best_log2_lr": e_best, "best_accuracy": acc}
        results.append("\n".join(lines))
        for arm in ("none", "bn"):
            bs = arm_batches(preset, arm)
            images.append(_heatmap(out / f"heatmap_{arm}_{budget}.png", table, grid, arm, bs,
                                   f"norm={arm}: stable range ({label})", label))
        if budget == "final" and GHOST_BATCHES[preset]:
            gb = GHOST_BATCHES[preset]
            for g in GHOST_SIZES:
                images.append(_heatmap(out / f"heatmap_ghost{g}.png", table, grid,
                                       f"ghost{g}", gb, f"ghost BN over {g}", label))
    return results, images


def _batch_plots(preset: str, recs: list[dict], out: Path) -> list[Path]:
    """Best accuracy and stable-range width against the batch."""
    seeds = SEEDS[preset]
    images: list[Path] = []
    table = cell_table(recs, seeds, "final")
    best_lines, width_lines = [], []
    for i, arm in enumerate(("none", "bn")):
        bs = [b for b in arm_batches(preset, arm) if best_cell(table, arm, b)[0] is not None]
        best_lines.append({"x": bs, "y": [best_cell(table, arm, b)[1] for b in bs],
                           "marker": "o", "color": f"C{i}", "label": f"norm={arm}"})
        for budget, ls in (("final", "-"), ("epoch1", "--")):
            w, _ = _widths(recs, arm, budget)
            xs = sorted(w)
            width_lines.append({"x": xs, "y": [w[b] for b in xs], "marker": "o", "ls": ls,
                                "color": f"C{i}",
                                "label": f"norm={arm}, " + ("after all epochs" if budget ==
                                                            "final" else "short view")})
    images.append(harness.plot_styled(out / "best_vs_batch.png", best_lines, logx=True,
                                 xlabel="batch size B", ylabel="best seed-mean test accuracy",
                                 title="Best accuracy over the stable lrs, per batch"))
    images.append(harness.plot_styled(out / "stable_range_vs_batch.png", width_lines, logx=True,
                                 xlabel="batch size B", ylabel="number of stable 2x lr steps",
                                 title="Width of the stable range of eta~ = eta/B"))
    return images


def _verdicts(preset: str, recs: list[dict]) -> tuple[list[str], dict[str, Any],
                                                      dict[str, dict[int, int]]]:
    """The verdict sections, the verdict records, and the short-view widths."""
    seeds = SEEDS[preset]
    # short-view widths, for the report (the verdict uses the final budget)
    short = {arm: _widths(recs, arm, "epoch1")[0] for arm in ("none", "bn")}
    verdict_md, verdicts = [], {}
    for key, crit in CRITERIA.items():
        v, details = crit(recs)
        verdicts[key] = {"claim": crit.claim, "criterion": crit.rule, "verdict": v,
                         "result": " ".join(d.lstrip("- ").strip() for d in details),
                         "details": details}
        verdict_md.append(crit.section(recs))
    table = cell_table(recs, seeds, "final")
    for arm, b in cells(preset):
        vals = [v for (a, bb, _), v in table.items() if a == arm and bb == b]
        if vals and not any(v["stable"] for v in vals):
            losses = [x for v in vals for x in v["loss_by_seed"].values() if math.isfinite(x)]
            accs = [v["accuracy"] for v in vals if math.isfinite(v["accuracy"])]
            verdict_md.append(
                f"No stable lr at {arm}, B={b}: lowest final training loss "
                f"{min(losses, default=math.nan):.2f} (threshold "
                f"{STABLE_FRACTION * INITIAL_LOSS:.2f}), best seed-mean test accuracy "
                f"{harness.fmt_acc(max(accs, default=math.nan))}"
                + (" (the training loss is measured in training mode, with BN statistics "
                   "over the batch: over 2 examples every normalised feature is +-1)."
                   if arm == "bn" and b == 2 else "."))
    bn_w, _ = _widths(recs, "bn", "final")
    if bn_w.get(2) == 0 and len(bn_w) > 3:
        from scipy import stats

        bs = [b for b in sorted(bn_w) if b > 2]
        tau, p = stats.kendalltau(np.log2(bs), [bn_w[b] for b in bs])
        verdict_md.append(
            f"Post-hoc note (not part of the pre-set rule, not used by the verdict): without "
            f"B=2 in the BN arm, the widths for B={bs[0]}..{bs[-1]} are "
            f"{[bn_w[b] for b in bs]}, Kendall tau(log B, width) = {tau:+.2f} (p={p:.3g}).")
    verdict_md.append("Short view (training loss in the second half of epoch 1, lr not yet "
                      "decayed; same runs), number of stable lrs per batch: "
                      + "; ".join(f"{arm}: {short[arm]}" for arm in short) + ".")
    return verdict_md, verdicts, short


def _setup_text(preset: str, base: TrainConfig) -> str:
    bounds, seeds = LOG2_LR_BOUNDS[preset], SEEDS[preset]
    setup = (
        f"Plain SGD (momentum 0), mean-loss learning rate eta = eta~ x B; eta~ in 2x steps "
        f"starting from {{{', '.join(f'2^{e}' for e in INITIAL_LOG2_LR[preset])}}} and "
        f"extended by one 2x step at each end of an (arm, batch) cell that is still stable "
        f"there, within [2^{bounds[0]}, 2^{bounds[1]}]. Batches {BATCH_SIZES[preset]}; arms: "
        f"no normalisation (`none`), BatchNorm over the whole batch (`bn`), ghost BN over "
        f"{list(GHOST_SIZES)} examples at SGD batches {GHOST_BATCHES[preset]}; seeds "
        f"{seeds} (a seed fixes the initialisation and the data order, so seeds pair runs). "
        f"Weight decay {base.weight_decay}; {base.epochs:g} epochs of {base.train_subset} "
        f"images for every batch, lr /10 at 50% and 75% (schedule=step), no warmup. "
        f"Stability: loss finite and final training loss (mean over the last 1/"
        f"{LOG_WINDOWS} of the run) < {STABLE_FRACTION:g} x ln 10 = "
        f"{STABLE_FRACTION * INITIAL_LOSS:.3f}.\n\n"
        + harness.base_config_table(base, ["model", "width", "dataset", "train_subset",
                                      "test_subset", "epochs", "weight_decay", "schedule"]))
    return setup


def _limits_text(preset: str, recs: list[dict], rows: list[dict],
                 timer: harness.Timer | None) -> str:
    missing = [b for b in BATCH_SIZES[preset] if not any(r["batch_size"] == b for r in recs)]
    limits_txt = (
        harness.preset_note(preset) + " "
        + (("Reductions: " + (f"batches {missing} have no finished run (time); "
                              if missing else "")
            + "1024 Fashion-MNIST training images and 8 epochs (the paper: CIFAR, "
           "82 epochs), so B=512 gets 16 steps in all; an MLP with two hidden layers of 256 "
           "units instead of a ResNet; 2 seeds (paired t-intervals with 1 degree of freedom "
           "are wide: a verdict that needs an interval to exclude 0 is hard to reach); "
           "ghost-BN arms only at SGD batches 64 and 512; the short budget is read from the "
           "same runs (training loss over the second half of epoch 1, before any lr decay) "
           "instead of separate short runs, and only for the stability range; the best lr "
           "is chosen on the same seeds that are compared (selection bias shared by every "
           "cell). The machine is a loaded 2-core CPU shared with other jobs, so the times "
           "are not benchmarks.")
           if preset == "cpu" else "")
        + "\n\n" + harness.run_time_note(rows, timer) + f" Machine: {harness.environment_note()}.")
    return limits_txt


def analyse(preset: str, base: TrainConfig, rows: list[dict], out: Path,
            grid: dict[tuple[str, int], set[int]], timer: harness.Timer | None) -> dict:
    recs = run_records(rows, out / "runs")
    with open(out / "rows.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v)
                                    else v) for k, v in r.items()}) + "\n")
    summary: dict[str, Any] = {"preset": preset, "cells": {}}
    results, images = _stability_tables(preset, base, recs, out, grid, summary)
    images += _batch_plots(preset, recs, out)
    verdict_md, verdicts, short = _verdicts(preset, recs)
    write_report(
        out, title="Small batch training (Masters & Luschi 2018)",
        intro=("Claims (i) best accuracy at small batches, (ii) the stable range of "
               "eta~ = eta/B shrinks with B, (iii) BN best over 4..8 examples; each with a "
               "criterion fixed in code before the run and a verdict computed from the rows. "
               "Raw rows: `rows.jsonl` (one per run), `runs/results.jsonl`, "
               "`runs/<run>/metrics.jsonl`."),
        sections=[Section("Setup", _setup_text(preset, base)),
                  Section("Results", "\n".join(results), images),
                  Section("Verdict", "\n\n".join(verdict_md)),
                  Section("Limits of the evidence",
                          _limits_text(preset, recs, rows, timer))])
    summary["claims"] = verdicts
    summary["short_view_widths"] = {a: {str(b): w for b, w in v.items()}
                                    for a, v in short.items()}
    summary["table"] = [{k: v[k] for k in ("claim", "criterion", "result", "verdict")}
                        for v in verdicts.values()]
    summary["headline"] = " ".join(f"**{k}: {v['verdict']}** ({v['result']})"
                                   for k, v in verdicts.items())
    harness.save_json(summary, out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = harness.experiment_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    grid = initial_grid(args.preset)
    if args.shard:  # shard by (arm, batch) cell: each cell's rounds stay in one process
        i, n = (int(v) for v in args.shard.split("/"))
        grid = {c: grid[c] for c in cells(args.preset)[i::n]}
    t0 = time.perf_counter()
    # the harness sets up the folder, cache, timer and base and runs the first round
    run = harness.run_experiment(NAME, argparse.Namespace(**{**vars(args), "shard": None}),
                                 base_config, lambda p, b: points(p, grid, b))
    base, out, rows = run.base, run.out, run.rows
    for _ in range(MAX_ROUNDS[args.preset] - 1):  # the harness ran the first round
        table = cell_table(run_records(rows, out / "runs"), SEEDS[args.preset])
        if not extend(grid, table, LOG2_LR_BOUNDS[args.preset]):
            break
        left = (None if args.max_minutes is None
                else args.max_minutes - (time.perf_counter() - t0) / 60)
        rows = harness.run_or_load(base, points(args.preset, grid, base), out / "runs",
                                   report_only=args.report_only or (left is not None
                                                                    and left <= 0),
                                   max_minutes=left)
    if args.shard:
        return {}  # one shard's cells only: rebuild the report with --report-only
    rows = harness.run_or_load(base, points(args.preset, grid, base), out / "runs",
                               report_only=True)
    return analyse(args.preset, base, rows, out, grid, run.timer)


if __name__ == "__main__":
    main()
