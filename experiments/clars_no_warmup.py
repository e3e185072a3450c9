"""Experiment 2: "Large batch training does not need warmup" (CLARS, Huo et al. 2020).

Claim: at large batch sizes CLARS without warmup trains as well as LARS with gradual
warmup, at a learning rate where LARS without warmup is hurt (its per-example-norm
denominator damps the early steps by itself).

Design v3 (issue 23): the BN-MLP (mlp2, ghost BatchNorm over 16 examples) on all of
Fashion-MNIST, batch 2048 (about B_crit/1.2 to B_crit/2 of this task, experiment 5), 7
epochs = 203 optimizer steps, warmup (when on) over 10% of them from 0, cosine decay.

1. Regime search (pre-registered, selection seed only): candidate fixed peak lrs in the
   order of :data:`REGIMES`; each runs LARS with and without warmup on the selection seed;
   the first where LARS without warmup loses at least 2 points is the regime. If none
   does, the search says so and nothing is scored.
2. The claim, at that fixed lr: CLARS (exact per-example norms) without warmup, LARS with
   warmup and LARS without warmup on 4 evaluation seeds (same initialisation and data
   order per seed): paired differences with 95% t-intervals, decided by the margin rule.
3. Reported, not scored: each method at its best lr of a 3-point grid on the selection
   seed (the fixed lr x 1/16, 1/4, 1), then the 4 evaluation seeds there.

The criterion is written to ``results/clars_no_warmup/criterion.json`` before the first run.

Usage:
  python experiments/clars_no_warmup.py --preset cpu
  python experiments/clars_no_warmup.py --preset cpu --report-only
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from experiments import evidence as ev  # noqa: E402
from experiments import harness  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "clars_no_warmup"
CLARS_NW = "CLARS (per example), no warmup"
LARS_WU = "LARS, warmup"
LARS_NW = "LARS, no warmup"
METHODS = (CLARS_NW, LARS_WU, LARS_NW)
BATCH = {"smoke": 64, "cpu": 2048}
EPOCHS = {"smoke": 1.0, "cpu": 7.0}  # cpu: 29 steps per epoch x 7 = 203 steps
WARMUP_FRAC = 0.10  # of the budget, from 0
BN_GROUP = 16
# candidate fixed peak lrs, searched in this order on the selection seed (first qualifies).
# Search 1 (criterion fixed 2026-12-07T08:53:08Z, folder results/clars_no_warmup_search1)
# tried 32, 128, 512 and found no regime (gaps -0.1, -12.4, -0.1 points: at 128 LARS with
# warmup diverged too). Search 2, fixed after seeing search 1 (and said so in the report),
# fills the gap between 32 and 128 in 2^(1/4) steps.
SEARCH1 = {"peak_lrs": (32.0, 128.0, 512.0), "folder": "clars_no_warmup_search1"}
REGIMES = {"smoke": (4.0,), "cpu": (45.0, 54.0, 64.0, 76.0, 90.0, 108.0)}
PROBLEM_PP = 2.0  # a regime: LARS without warmup loses >= 2 points to LARS with warmup
MARGIN_PP = 1.0  # "as well as": CLARS - LARS+warmup >= -1 point over the whole interval
BEST_FACTORS = (1 / 16, 1 / 4, 1.0)  # reported best-lr grid, x the fixed lr
SELECTION_SEED = 100
EVAL_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3)}


# ------------------------------------------------------------------ criteria (pre-set)


def _acc(r: Mapping[str, Any]) -> float:
    a = r.get("test_accuracy")
    return float(a) if isinstance(a, int | float) and math.isfinite(a) else 0.1


def _at(rows: Sequence[Mapping[str, Any]], method: str, lr: float, seed: int | None = None
        ) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["method"] == method and math.isclose(
        float(r["learning_rate"]), lr) and (seed is None or int(r["seed"]) == seed)]


def search(rows: Sequence[Mapping[str, Any]], regimes: Sequence[float]
           ) -> tuple[float | None, list[tuple[float, float | None]]]:
    """The first candidate lr (in order) where LARS with minus without warmup on the
    selection seed is >= PROBLEM_PP points; a diverged run counts as chance (0.1).

    Returns ``(regime lr or None, [(lr, gap in points or None if unfinished)])``; the search
    stops at the first unfinished candidate (its successors are not yet run)."""
    seen: list[tuple[float, float | None]] = []
    for lr in regimes:
        wu, nw = _at(rows, LARS_WU, lr, SELECTION_SEED), _at(rows, LARS_NW, lr, SELECTION_SEED)
        if not wu or not nw:
            seen.append((lr, None))
            return None, seen
        gap = 100 * (_acc(wu[0]) - _acc(nw[0]))
        seen.append((lr, gap))
        if gap >= PROBLEM_PP:
            return lr, seen
    return None, seen


def by_seed(rows: Sequence[Mapping[str, Any]], method: str, lr: float) -> dict[int, float]:
    """Scored (evaluation-seed) accuracy of ``method`` at ``lr``, by seed."""
    return {int(r["seed"]): _acc(r) for r in _at(rows, method, lr) if r.get("scored")}


def _pp(d: ev.Interval) -> ev.Interval:
    return ev.Interval(*[100 * x if i < 4 else x for i, x in enumerate(d)])


def decide_claim(rows: Sequence[Mapping[str, Any]], regimes: Sequence[float] = REGIMES["cpu"]
                 ) -> tuple[ev.Verdict, list[str]]:
    """Huo et al.'s claim at the searched fixed lr (see ``CLAIM.rule``)."""
    lr, seen = search(rows, regimes)
    details = ["- Regime search (selection seed, LARS with minus without warmup, points): "
               + "; ".join(f"lr {x:g}: " + ("not run" if g is None else f"{g:+.1f}")
                           for x, g in seen) + "."]
    if lr is None:
        details.append(f"- **No regime** in the pre-registered search: LARS without warmup "
                       f"loses < {PROBLEM_PP:g} points at every candidate lr (or the search "
                       f"is unfinished). Nothing to fix; nothing scored.")
        return "inconclusive", details
    acc = {m: by_seed(rows, m, lr) for m in METHODS}
    problem = _pp(ev.paired(acc[LARS_WU], acc[LARS_NW]))
    p_st, p_why = ev.margin_status(problem, low=0.0)
    claim = _pp(ev.paired(acc[CLARS_NW], acc[LARS_WU]))
    c_st, c_why = ev.margin_status(claim, low=-MARGIN_PP)
    extra = _pp(ev.paired(acc[CLARS_NW], acc[LARS_NW]))
    e_st, e_why = ev.margin_status(extra, low=0.0)
    details += [f"- Fixed peak lr {lr:g}; evaluation seeds {sorted(acc[CLARS_NW])}.",
                f"- Warmup problem on the evaluation seeds, LARS with minus without warmup: "
                f"{problem.fmt(unit=' pt')} -> {p_st} in [0, inf) ({p_why}).",
                f"- **CLARS without warmup minus LARS with warmup: {claim.fmt(unit=' pt')} "
                f"-> {c_st}** in [-{MARGIN_PP:g}, inf) ({c_why}).",
                f"- CLARS without warmup minus LARS without warmup: {extra.fmt(unit=' pt')} "
                f"-> {e_st} in [0, inf) ({e_why}); reported."]
    if p_st != "holds" or not problem.lo > 0:  # strictly above 0: a tie is no problem
        details.append("- The warmup problem is not confirmed on the evaluation seeds: "
                       "inconclusive.")
        return "inconclusive", details
    if c_st == "holds":
        return "supported", details
    if c_st == "fails":
        return "contradicted", details
    return "inconclusive", details


def best_lr(rows: Sequence[Mapping[str, Any]], method: str, fixed: float
            ) -> tuple[float | None, ev.Edge | None]:
    """A method's best lr on the reported grid (selection seed)."""
    scores = {}
    for f in BEST_FACTORS:
        sel = _at(rows, method, fixed * f, SELECTION_SEED)
        if sel:
            scores[fixed * f] = _acc(sel[0])
    if len(scores) < len(BEST_FACTORS):
        return None, None
    return ev.best_on_grid(scores)


CLAIM = ev.Criterion(
    claim=("At large batch sizes CLARS without warmup trains as well as LARS with gradual "
           "warmup, at a learning rate where LARS without warmup is hurt (Huo, Gu, Huang "
           "2020, arXiv 2002.01576)."),
    rule=(f"BN-MLP on Fashion-MNIST, batch 2048, 203 steps, warmup over 10% of them. "
          f"Regime search 2 on selection seed {SELECTION_SEED} (fixed after search 1 over "
          f"peak lrs {list(SEARCH1['peak_lrs'])} found no regime): candidate peak lrs "
          f"{list(REGIMES['cpu'])} in order; the first where LARS with warmup beats LARS "
          f"without by >= {PROBLEM_PP:g} points is the fixed lr (a diverged run counts as "
          f"10%). No such lr: inconclusive, 'no regime'. At the fixed lr, evaluation seeds "
          f"{list(EVAL_SEEDS['cpu'])}, paired differences with 95% t-intervals. The warmup "
          f"problem must be confirmed there (LARS with minus without warmup wholly above 0), "
          f"else inconclusive. Then CLARS without warmup minus LARS with warmup: "
          f"**supported** when its whole interval lies above -{MARGIN_PP:g} point, "
          f"**contradicted** when it lies wholly below -{MARGIN_PP:g}, else inconclusive. "
          f"Each method at its best lr of a 3-point grid (x1/16, x1/4, x1 the fixed lr, "
          f"selection seed) is reported, not scored."),
    decide=decide_claim,
)


# ------------------------------------------------------------------ runs


def base_config(preset: str) -> TrainConfig:
    if preset not in BATCH:
        raise ValueError(f"preset must be 'smoke' or 'cpu' (v3 defines no GPU preset), "
                         f"got {preset!r}")
    common = dict(dtype="float32", trust_coefficient=0.001, optimizer="lars",
                  batch_size=BATCH[preset], base_batch_size=BATCH[preset], lr_scaling="linear",
                  momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_start="zero",
                  norm="batch", bn_span="ghost", bn_ghost_size=BN_GROUP,
                  checkpoint_every_steps=-1, plot=False, progress=False, label_smoothing=0.0,
                  epochs=EPOCHS[preset], model="mlp2", width=1.0, dataset="fashion_mnist",
                  crop_padding=0, flip=False, num_devices=1, eval_every_epochs=0.0)
    if preset == "smoke":
        return TrainConfig(**common, train_subset=256, test_subset=256, log_every_steps=2,
                           steps_per_call=2)
    return TrainConfig(**common, log_every_steps=7, steps_per_call=7)


def _point(method: str, lr: float, seed: int, preset: str) -> dict[str, Any]:
    return point_for(method, lr, seed, round(WARMUP_FRAC * EPOCHS[preset], 6))


def point_for(method: str, lr: float, seed: int, warmup_epochs: float) -> dict[str, Any]:
    """The run point of ``method`` at peak ``lr`` (warmup only for LARS with warmup)."""
    warm = warmup_epochs if method == LARS_WU else 0.0
    opt = {"optimizer": "clars", "clars_granularity": "example"} if method == CLARS_NW \
        else {"optimizer": "lars"}
    return {**opt, "warmup_epochs": warm, "learning_rate": lr, "seed": seed}


def plan(preset: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The search (in order, stopping at the regime), then the claim's evaluation seeds,
    then the reported best-lr grids and their evaluation seeds."""
    return plan_search(rows, REGIMES[preset], EVAL_SEEDS[preset],
                       round(WARMUP_FRAC * EPOCHS[preset], 6), best=True)


def plan_search(rows: Sequence[Mapping[str, Any]], regimes: Sequence[float],
                eval_seeds: Sequence[int], warmup_epochs: float, best: bool
                ) -> list[dict[str, Any]]:
    """The plan of a regime search (shared with the ResNet-8 arm): LARS with and without
    warmup on the selection seed at each candidate in order, stopping at the regime; then
    the three methods on ``eval_seeds`` at it; with ``best``, the reported best-lr grids
    (:data:`BEST_FACTORS`) and their evaluation seeds."""
    out: list[dict[str, Any]] = []
    for lr in regimes:
        out += [point_for(LARS_WU, lr, SELECTION_SEED, warmup_epochs),
                point_for(LARS_NW, lr, SELECTION_SEED, warmup_epochs)]
        if len(_at(rows, LARS_WU, lr, SELECTION_SEED) + _at(rows, LARS_NW, lr,
                                                            SELECTION_SEED)) < 2:
            return out
        if search(rows, regimes)[0] == lr:
            break  # the regime: later candidates are not run
    lr, _ = search(rows, regimes)
    if lr is None:
        return out
    out += [point_for(m, lr, s, warmup_epochs) for s in eval_seeds for m in METHODS]
    if not best:
        return out
    out += [point_for(m, lr * f, SELECTION_SEED, warmup_epochs) for m in METHODS
            for f in BEST_FACTORS]
    for m in METHODS:
        b, _ = best_lr(rows, m, lr)
        if b is not None:
            out += [point_for(m, b, s, warmup_epochs) for s in eval_seeds]
    return out


def method_of(c: Mapping[str, Any]) -> str:
    if c["optimizer"] == "clars":
        return CLARS_NW
    return LARS_WU if float(c["warmup_epochs"]) > 0 else LARS_NW


def to_row(res: Mapping[str, Any], run: Path, point: Mapping[str, Any]) -> dict[str, Any]:
    c = harness.config_of(res)
    acc = harness.final_accuracy(res)
    steps = (res.get("summary") or {}).get("steps")
    xs, ys = harness.curve(harness.read_metrics(res, run.parent), "loss", x="step")
    return {"method": method_of(c), "optimizer": c["optimizer"], "seed": int(c["seed"]),
            "learning_rate": float(c["learning_rate"]), "batch_size": int(c["batch_size"]),
            "warmup_epochs": float(c["warmup_epochs"]),
            "test_accuracy": acc if math.isfinite(acc) else None,
            "outcome": harness.outcome(res), "total_steps": steps, "budget_exempt": False,
            "bn_examples": min(int(c["bn_ghost_size"]), int(c["batch_size"])),
            "role": "selection" if int(c["seed"]) == SELECTION_SEED else "evaluation",
            "loss_curve": [[int(x), round(float(y), 4)] for x, y in zip(xs, ys, strict=True)]}


def registered(preset: str, base: TrainConfig) -> harness.Registered:
    spec = harness.criterion_spec(
        CLAIM.rule,
        grids={"regimes_peak_lr": list(REGIMES[preset]), "search1": SEARCH1,
               "best_factors": list(BEST_FACTORS), "batch": BATCH[preset],
               "methods": list(METHODS)},
        seeds={"selection": SELECTION_SEED, "evaluation": list(EVAL_SEEDS[preset])},
        budgets={"epochs": EPOCHS[preset], "warmup_frac": WARMUP_FRAC,
                 "problem_pp": PROBLEM_PP, "margin_pp": MARGIN_PP, "bn_group": BN_GROUP,
                 "min_scored_steps": harness.MIN_SCORED_STEPS},
        decide=[_acc, _at, search, by_seed, _pp, decide_claim, best_lr])
    return harness.Registered(spec, lambda rows: plan(preset, rows), to_row,
                              (SELECTION_SEED,))


# ------------------------------------------------------------------ report


def search_table(rows: Sequence[Mapping[str, Any]], preset: str,
                 regimes: Sequence[float] | None = None) -> str:
    """The regime search on the selection seed (``regimes``: default the preset's)."""
    lines = ["| candidate peak lr | LARS, warmup | LARS, no warmup | with minus without (pt) |",
             "| --: | --: | --: | --: |"]
    for lr, gap in search(rows, REGIMES[preset] if regimes is None else regimes)[1]:
        wu, nw = _at(rows, LARS_WU, lr, SELECTION_SEED), _at(rows, LARS_NW, lr, SELECTION_SEED)
        lines.append(f"| {lr:g} | {harness.fmt_acc(_acc(wu[0])) if wu else '-'} | "
                     f"{harness.fmt_acc(_acc(nw[0])) if nw else '-'} | "
                     + ("-" if gap is None else f"{gap:+.1f}") + " |")
    return "\n".join(lines) + "\n"


def best_table(rows: Sequence[Mapping[str, Any]], preset: str) -> str:
    """Reported, not scored: each method at its own best lr (selection seed grid)."""
    lr, _ = search(rows, REGIMES[preset])
    if lr is None:
        return "No regime: no best-lr comparison.\n"
    lines = ["| method | selection seed: peak lr -> accuracy | best lr | evaluation "
             "accuracy % (mean ± se [95%]) |", "| :-- | :-- | :-- | :-- |"]
    accs = {}
    for m in METHODS:
        grid = ", ".join(f"{lr * f:g}: {harness.fmt_acc(_acc(s[0]))}" for f in BEST_FACTORS
                         if (s := _at(rows, m, lr * f, SELECTION_SEED)))
        best, edge = best_lr(rows, m, lr)
        accs[m] = by_seed(rows, m, best) if best is not None else {}
        iv = ev.interval([100 * a for a in accs[m].values()])
        lines.append(f"| {m} | {grid or '-'} | "
                     + ("unfinished" if best is None else f"{best:g}"
                        + (f" ({edge} edge)" if edge else "")) + f" | {iv.fmt()} |")
    return "\n".join(lines) + "\n\n" + best_line(rows, preset) + "\n"


def best_line(rows: Sequence[Mapping[str, Any]], preset: str) -> str:
    """CLARS minus LARS with warmup, each at its own best lr (reported only)."""
    lr, _ = search(rows, REGIMES[preset])
    if lr is None:
        return "no regime, no best-lr comparison."
    acc = {m: by_seed(rows, m, b) if (b := best_lr(rows, m, lr)[0]) is not None else {}
           for m in (CLARS_NW, LARS_WU)}
    d = _pp(ev.paired(acc[CLARS_NW], acc[LARS_WU]))
    return (f"CLARS without warmup minus LARS with warmup, each at its best lr (paired over "
            f"evaluation seeds, reported only): {d.fmt(unit=' pt')}.")


def plot_curves(out: Path, rows: Sequence[Mapping[str, Any]], preset: str,
                regimes: Sequence[float] | None = None, batch: int | None = None
                ) -> Path | None:
    """Training loss of the evaluation seeds at the fixed lr (``regimes`` and ``batch``:
    default the preset's)."""
    lr, _ = search(rows, REGIMES[preset] if regimes is None else regimes)
    lines = []
    for i, m in enumerate(METHODS):
        for r in ([] if lr is None else _at(rows, m, lr)):
            if r.get("scored") and r.get("loss_curve"):
                lines.append({"x": [p[0] for p in r["loss_curve"]],
                              "y": [p[1] for p in r["loss_curve"]], "color": f"C{i}",
                              "lw": 1.0, "label": m if int(r["seed"]) == 0 else None})
    if not lines:
        return None
    return harness.plot_styled(out / "curves_fixed_lr.png", lines, xlabel="step",
                               ylabel="training loss (logged batches)", logy=True,
                               title=f"Fixed peak lr {lr:g}, batch {batch or BATCH[preset]}, "
                                     f"evaluation seeds", hlines={"ln 10": math.log(10)})


def search1_text(out: Path) -> str:
    """The earlier, registered search 1 (its own folder and criterion) and the restart."""
    import json

    p = out.parent / SEARCH1["folder"] / "summary.json"
    s1 = json.loads(p.read_text()) if p.exists() else {}
    return (f"Search 1 ([its report](../{SEARCH1['folder']}/report.md), criterion_sha "
            f"`{str(s1.get('criterion_sha'))[:12]}`, fixed at {s1.get('fixed_at')}) tried "
            f"peak lrs {list(SEARCH1['peak_lrs'])} with the same design: "
            + " ".join(d.lstrip("- ") for d in s1.get("details", [])[:1])
            + " It found **no regime**: at 32 warmup changes nothing, at 128 LARS with "
            "warmup diverges as well (its loss rises as the warmup ends), at 512 both fail. "
            "Search 2 (this folder) was then fixed, after seeing search 1, to fill the gap "
            "between 32 and 128 in 2^(1/4) steps; it is a second look, said so here. A "
            "first start of search 2 was stopped after its first two runs (peak lr 45: "
            "-0.7 points) to make the warmup-problem check strict (an exact tie had counted "
            "as confirmed); that folder was deleted and search 2 restarted with the same "
            "candidates (the rerun reproduced both runs exactly).\n")


def setup_text(base: TrainConfig) -> str:
    spe, total = base.run_steps(base.num_train_examples())
    return (f"{base.model} (BN-MLP, ghost BatchNorm over {BN_GROUP} examples) on all of "
            f"{base.dataset}; batch {base.batch_size} ({spe} steps per epoch), "
            f"{base.epochs:g} epochs = {total} optimizer steps; lr given as the peak lr; "
            f"warmup (LARS with warmup) linear from 0 over {100 * WARMUP_FRAC:g}% of the "
            f"budget, then cosine decay (all methods); momentum {base.momentum}, weight decay "
            f"{base.weight_decay}, trust coefficient {base.trust_coefficient}. CLARS uses the "
            f"mean of exact per-example gradient norms (the project's reading of the paper, "
            f"marked unverified in lars_jax.scale_by_clars_trust_ratio). Biases take the "
            f"plain lr (lars_jax.default_mask). Batch 2048 is about B_crit/1.2-B_crit/2 of "
            f"this task (experiment 5: B_crit about 2.5k-4k); Huo et al.'s 8k-32k on "
            f"ImageNet lie about at and above ImageNet's critical batch, so this is the "
            f"smaller-batch end of the claim.")


def limits_text() -> str:
    return ("A 2-layer BN-MLP on Fashion-MNIST for 203 steps on a shared 2-core CPU: the "
            "ResNet-8 arm is its own pre-registered experiment (`clars_resnet8`, batch 256: "
            "its report); no ImageNet-scale batch (8k-32k); the cpu preset only (no "
            "GPU preset is defined). The searches have 3 and 6 candidate lrs and the "
            "reported best-lr grid 3 points; search 2 was fixed after search 1 had found "
            "nothing (a second look, declared). The regime is chosen on one selection-seed "
            "run per arm: at peak lr 76 LARS sits on a cliff (accuracy 44-74% across seeds), "
            "so the selection seed's +27.5-point gap did not carry over to the evaluation "
            "seeds, which is why the pre-set recheck leaves the verdict inconclusive. The "
            "curves (curves_fixed_lr.png) show that 76 is too high for LARS with or without "
            "warmup: LARS with warmup blows up as its warmup ends (step 20-25), and both "
            "LARS arms stay above ln 10 until the cosine decay lowers the lr; CLARS's loss "
            "also spikes in the first 15 steps but recovers by step 50. The "
            "fixed lr is one nominal lr for both methods, as in the claim, but CLARS's "
            "per-example denominator (mean per-example norm >= batch-gradient norm) makes "
            "its step smaller at the same lr: at 76 CLARS behaves like LARS at a lower lr "
            "(its own grid is flat from 19 to 76), and at each method's best lr (19 for all "
            "three, where warmup makes no difference) CLARS is about 3 points below LARS "
            "(reported, not scored). So this scale cannot separate 'CLARS removes the need "
            "for warmup' from 'CLARS takes smaller steps at a given lr'.")


def analyse(preset: str, run: harness.ExperimentRun) -> dict:
    from lars_jax.runs.report import Section, write_report

    rows, out = run.rows, run.out
    verdict, details = CLAIM(rows) if preset == "cpu" else decide_claim(rows, REGIMES[preset])
    crit = harness.read_criterion(out)
    images = [p for p in (plot_curves(out, rows, preset),) if p]
    write_report(
        out, title="Does large-batch training need warmup? CLARS vs LARS (Huo et al.)",
        intro="Design v3 (issue 23). Raw rows: `rows.jsonl` (one per run, with its sha).",
        sections=[Section("Setup", setup_text(run.base)),
                  Section("Pre-registration", harness.registered_note(out, rows)),
                  Section("Verdict", CLAIM.section(rows) if preset == "cpu" else
                          "\n".join([f"**Verdict: {verdict}.**", "", *details])),
                  Section("Regime search", search_table(rows, preset)
                          + ("\n" + search1_text(out) if preset == "cpu" else "")),
                  Section("Each method at its best lr (reported, not scored)",
                          best_table(rows, preset), images),
                  Section("Limits of the evidence", limits_text()),
                  Section("Compute", harness.compute_note(rows, out))])
    result = " ".join(d.lstrip("- ").replace("**", "") for d in details
                      if d.startswith(("- Fixed", "- Warmup problem", "- **CLARS", "- No",
                                       "- **No")))
    if preset == "cpu":
        result = (f"Regime search 2 (search 1 over {list(SEARCH1['peak_lrs'])} found none). "
                  + re.sub(r" \((interval|n=\d <)[^)]*\)", "", result.replace(
                      "evaluation seeds [0, 1, 2, 3]", "4 evaluation seeds"))
                  + " " + best_line(rows, preset))
    summary = {"preset": preset, "design": "v3", "criterion_sha": crit["criterion_sha"],
               "fixed_at": crit["fixed_at"], "verdict": verdict, "details": details,
               "regime_peak_lr": search(rows, REGIMES[preset])[0],
               "table": [{"claim": CLAIM.claim, "criterion": CLAIM.rule, "verdict": verdict,
                          "result": result}],
               "headline": f"{verdict}: {result}",
               "mean_accuracy": {m: float(np.mean([_acc(r) for r in rows if r["method"] == m
                                                   and r.get("scored")] or [math.nan]))
                                 for m in METHODS}}
    harness.save_json(summary, out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return harness.experiment_main(NAME, __doc__, base_config, registered, analyse, argv)


if __name__ == "__main__":
    main()
