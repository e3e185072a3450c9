"""Experiment 5: the gradient noise scale predicts the critical batch size (McCandlish et al.).

Claim (McCandlish et al. 2018, cited by seed 004): the steps S and examples E needed to
reach a given loss trade off as S = S_min (1 + B_noise/B), E = E_min (1 + B/B_noise), so
the critical batch B_crit = E_min / S_min marks where larger batches stop buying
proportionally fewer steps; and the "simple" noise scale B_simple = tr(Sigma)/|G|^2,
measured during training at the same loss, predicts B_crit.

Design (issue 14): steps to reach three target test errors for batches 32 to 8192 in 2x
steps, each at the best lr of a 2x grid around the linear rule's prediction (batches
128-8192 are experiment 1's SGD runs, seed 0; this script adds 32 and 64 with the same
model, budget and protocol); fit S(B) per target, B_crit with a bootstrap interval over
batch sizes; B_simple from a fixed small-batch run (B=128 as 4 accumulation micro-batches
of 32, logged every step, two seeds) read where that run reaches each target. The verdict
is computed by the module-level criterion below, fixed before any run.

Usage:
  python experiments/gradient_noise_scale.py --preset cpu      # after experiment 1
  python experiments/gradient_noise_scale.py --preset cpu --report-only
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from experiments import evidence as ev  # noqa: E402
from experiments import harness  # noqa: E402
from experiments import linear_scaling_warmup as ls  # noqa: E402
from lars_jax.runs.report import Section, write_report  # noqa: E402
from lars_jax.runs.run_files import noise_scale_from_metrics  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "gradient_noise_scale"
EMA = 0.95  # EMA decay of numerator and denominator of B_simple (per step)
SMALL_BATCHES = {"smoke": [], "cpu": [32, 64], "full": [64, 128]}
NOISE_RUN = {"smoke": (64, 2), "cpu": (128, 4), "full": (256, 8)}  # (batch, micro-batches)
NOISE_SEEDS = {"smoke": (0,), "cpu": (0, 1), "full": (0, 1)}
TARGET_ERRORS = ls.TARGET_ERRORS
FACTOR = 3.0  # "consistent": B_simple within [lo / 3, 3 hi] of B_crit's bootstrap interval
MAX_WIDTH = 30.0  # an interval wider than hi/lo = 30 cannot decide a factor-3 question
MIN_BATCHES = 4  # batch sizes that reach a target, needed to fit it


# ------------------------------------------------------------------ criterion (pre-set)


def fit_target(rows: Sequence[Mapping[str, Any]], target: float) -> dict[str, Any]:
    """Fit of S(B) at one target: estimate, bootstrap interval over batch sizes, points."""
    pts = sorted((float(r["batch_size"]), float(r["steps"])) for r in rows
                 if r.get("kind") == "steps" and r["target"] == target
                 and r.get("steps") is not None)
    out: dict[str, Any] = {"target": target, "points": pts, "b_crit": math.nan,
                           "lo": math.nan, "hi": math.nan, "s_min": math.nan}
    if len(pts) < MIN_BATCHES:
        return out
    arr = np.asarray(pts)
    s_min, b_noise = ev.fit_steps_to_target(arr[:, 0], arr[:, 1])

    def stat(a: np.ndarray) -> float:
        if np.unique(a[:, 0]).size < 3:
            return math.nan
        return ev.fit_steps_to_target(a[:, 0], a[:, 1])[1]

    _, lo, hi = ev.bootstrap_interval(stat, arr, n_boot=400)
    out.update(b_crit=b_noise, s_min=s_min, e_min=s_min * b_noise, lo=lo, hi=hi)
    return out


def decide_noise_scale(rows: Sequence[Mapping[str, Any]]) -> tuple[ev.Verdict, list[str]]:
    """See ``NOISE_SCALE.rule``."""
    targets = sorted({float(r["target"]) for r in rows}, reverse=True)
    decided, consistent, details = 0, 0, []
    for t in targets:
        f = fit_target(rows, t)
        bs = [float(r["b_simple"]) for r in rows if r.get("kind") == "b_simple"
              and r["target"] == t and r.get("b_simple") is not None
              and math.isfinite(r["b_simple"])]
        b_simple = float(np.mean(bs)) if bs else math.nan
        head = f"- Target {100 * t:g}% test error: "
        measured = [b for b, _ in f["points"]]
        if (not measured or not min(measured) / 4 <= f["b_crit"] <= 4 * max(measured)
                or not math.isfinite(f["lo"]) or not math.isfinite(f["hi"]) or f["lo"] <= 0):
            details.append(head + f"{len(f['points'])} batch sizes reach it; B_crit "
                           f"{f['b_crit']:.4g}: no bend located within the measured batches "
                           f"(or no finite bootstrap interval): undecided.")
            continue
        txt = (head + f"B_crit = {f['b_crit']:.0f} (95% bootstrap {f['lo']:.0f} to "
               f"{f['hi']:.0f}, {len(f['points'])} batch sizes), B_simple = "
               + (f"{b_simple:.0f} ({', '.join(f'{v:.0f}' for v in bs)})" if bs else "n/a"))
        if f["hi"] / f["lo"] > MAX_WIDTH or not math.isfinite(b_simple):
            details.append(txt + ": undecided (interval too wide or no B_simple).")
            continue
        decided += 1
        ok = f["lo"] / FACTOR <= b_simple <= FACTOR * f["hi"]
        consistent += ok
        ratio = b_simple / f["b_crit"] if f["b_crit"] > 0 else math.inf
        details.append(txt + f"; B_simple / B_crit = {ratio:.2g} -> "
                       + ("**consistent**" if ok else "**not consistent**") + ".")
    if decided >= 2 and consistent == decided:
        return "supported", details
    if decided >= 2 and 2 * consistent < decided:
        return "contradicted", details
    return "inconclusive", details


NOISE_SCALE = ev.Criterion(
    claim=("The gradient noise scale B_simple = tr(Sigma)/|G|^2, measured during training, "
           "predicts the critical batch B_crit = E_min/S_min of the steps/examples trade-off "
           "to reach a given loss (McCandlish et al. 2018)."),
    rule=(f"Per target test error ({', '.join(f'{100 * t:g}%' for t in TARGET_ERRORS)}): fit "
          f"S = S_min (1 + B_noise/B) (least squares on log S) to the fewest steps over the "
          f"lr grid at each batch that reaches the target (at least {MIN_BATCHES}); B_crit = "
          f"E_min/S_min = B_noise with a 95% percentile bootstrap interval [lo, hi] over batch "
          f"sizes. The target is *decided* when the estimate lies within [B_min/4, 4 B_max] "
          f"of the batches that reach it and the interval is finite with hi/lo <= "
          f"{MAX_WIDTH:g}; there B_simple (the mean over seeds of the EMA estimate of the "
          f"fixed small-batch run at the step it reaches the target) is *consistent* when "
          f"lo/{FACTOR:g} <= B_simple <= {FACTOR:g} hi. **Supported** if at least 2 targets "
          f"are decided and all are consistent; **contradicted** if at least 2 are decided "
          f"and most are not consistent; **inconclusive** otherwise."),
    decide=decide_noise_scale,
)


# ------------------------------------------------------------------ runs


def base_config(preset: str) -> TrainConfig:
    """Experiment 1's base config (same model, data, budget and lr rule)."""
    return ls.base_config(preset)


def noise_points(preset: str, base: TrainConfig) -> list[dict]:
    b, k = NOISE_RUN[preset]
    return [{"optimizer": "sgd", "batch_size": b, "grad_accum_steps": k,
             "learning_rate": ls.LR_CENTRE["sgd"], "seed": s, "log_every_steps": 1,
             "steps_per_call": 1, "eval_every_epochs": ls.eval_every(base, b)}
            for s in NOISE_SEEDS[preset]]


def plan(preset: str, base: TrainConfig, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Noise-scale runs, then the small batches' lr grids (warmup off below the base
    batch: the linear rule's lr is lower than the base lr there)."""
    flat = [r for r in rows if r["batch_size"] in SMALL_BATCHES[preset]
            and r.get("grad_accum_steps", 1) == 1]
    pts = ls.plan(preset, base, ["sgd"], SMALL_BATCHES[preset],
                  [r for r in flat if r["seed"] == 0])
    pts = [{**p, "warmup_epochs": 0.0, "steps_per_call": 50} for p in pts if p["seed"] == 0]
    return noise_points(preset, base) + pts


def flat_rows(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[dict]:
    flat = ls.flat_rows(rows, out_dir)
    for f, r in zip(flat, rows, strict=True):
        f["grad_accum_steps"] = int(harness.config_of(r).get("grad_accum_steps", 1))
    return flat


# ------------------------------------------------------------------ report


def b_simple_rows(preset: str, rows: Sequence[Mapping[str, Any]], runs: Path
                  ) -> tuple[list[dict], dict[str, Any]]:
    """B_simple at the step each noise-scale run reaches each target, and the series."""
    b, k = NOISE_RUN[preset]
    out, series = [], {}
    for r in rows:
        c = harness.config_of(r)
        if int(c["batch_size"]) != b or int(c.get("grad_accum_steps", 1)) != k:
            continue
        ns = noise_scale_from_metrics(harness.run_dir(r, runs), ema=EMA)
        m = harness.read_metrics(r, runs)
        seed = int(c["seed"])
        series[seed] = ns
        for t in TARGET_ERRORS:
            s = harness.steps_to_target(m, "test_accuracy", t, transform=lambda a: 1 - a)
            v = None
            if s is not None and len(ns["step"]):
                i = int(np.searchsorted(ns["step"], s, side="right")) - 1
                v = float(ns["b_simple"][max(i, 0)])
                v = v if math.isfinite(v) else None
            out.append({"kind": "b_simple", "target": t, "seed": seed, "step": s,
                        "b_simple": v})
    return out, series


def steps_rows(exp1: Sequence[Mapping[str, Any]], own: Sequence[Mapping[str, Any]]
               ) -> list[dict]:
    """Fewest steps to each target over the lr grid per batch (SGD, seed 0)."""
    flat = [r for r in [*exp1, *own] if r["optimizer"] == "sgd" and r["seed"] == 0
            and r.get("grad_accum_steps", 1) == 1]
    out = []
    for t in TARGET_ERRORS:
        for b in sorted({r["batch_size"] for r in flat}):
            ss = [r["steps_to_error"].get(f"{t:g}") for r in flat if r["batch_size"] == b]
            ss = [s for s in ss if s is not None]
            out.append({"kind": "steps", "target": t, "batch_size": b,
                        "steps": min(ss) if ss else None, "lrs": len(ss)})
    return out


def analyse(preset: str, base: TrainConfig, out: Path, timer: harness.Timer | None,
            exp1_dir: Path) -> dict:
    runs = out / "runs"
    raw = [r for r in harness.load_rows(runs) if harness.finished(r)] if runs.exists() else []
    raw = harness.rows_for(plan(preset, base, flat_rows(raw, runs)), raw)  # this design's runs
    own = flat_rows(raw, runs)
    exp1_rows = exp1_dir / "rows.jsonl"
    exp1 = ([json.loads(x) for x in exp1_rows.read_text().splitlines() if x.strip()]
            if exp1_rows.exists() else [])
    bs_rows, series = b_simple_rows(preset, raw, runs)
    rows = steps_rows(exp1, [r for r in own if r["grad_accum_steps"] == 1]) + bs_rows
    with open(out / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    verdict, details = NOISE_SCALE(rows)
    fits = {f"{t:g}": fit_target(rows, t) for t in TARGET_ERRORS}

    # plots: steps vs batch with fits; B_simple over training with the B_crit bands
    colors = ["tab:blue", "tab:orange", "tab:green"]
    lines = []
    for (key, f), col in zip(fits.items(), colors, strict=False):
        pts = f["points"]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        lines.append({"x": x, "y": y, "marker": "o", "ls": "", "color": col,
                      "label": f"{100 * float(key):g}% error: measured"})
        if math.isfinite(f["s_min"]) and math.isfinite(f["b_crit"]):
            bb = np.geomspace(min(x), max(x), 60)
            lines.append({"x": bb, "y": f["s_min"] * (1 + f["b_crit"] / bb), "color": col,
                          "label": f"fit, B_crit={f['b_crit']:.0f}"})
            lines.append({"x": bb, "y": f["s_min"] * (1 + f["b_crit"] / bb[0]) * bb[0] / bb,
                          "color": col, "ls": ":", "lw": 0.8})
    images = []
    if lines:
        images.append(harness.plot_styled(out / "steps_vs_batch.png", lines, xlabel="batch size",
                                     ylabel="steps to target (best lr, seed 0)",
                                     title="Steps to target; dotted: perfect scaling",
                                     logx=True, logy=True))
    bl = []
    for seed, ns in series.items():
        spe = max(1, ls.train_size(base) // NOISE_RUN[preset][0])
        bl.append({"x": ns["step"] / spe, "y": ns["b_simple"], "label": f"B_simple, seed {seed}",
                   "lw": 1.0})
    hl = {f"B_crit at {100 * float(k):g}% ({f['b_crit']:.0f})": f["b_crit"]
          for k, f in fits.items() if math.isfinite(f["b_crit"]) and f["b_crit"] > 0}
    if bl:
        images.append(harness.plot_styled(out / "b_simple.png", bl, xlabel="epoch",
                                     ylabel="B_simple (EMA)", logy=True, hlines=hl,
                                     title=f"Noise scale during a B={NOISE_RUN[preset][0]} run"))

    tab = ["| target error | " + " | ".join(
        f"B={r['batch_size']}" for r in rows if r["kind"] == "steps"
        and r["target"] == TARGET_ERRORS[0]) + " |"]
    nb = len(tab[0].split("|")) - 3
    tab.append("| :-- |" + " --: |" * nb)
    for t in TARGET_ERRORS:
        tab.append(f"| {100 * t:g}% | " + " | ".join(
            "not reached" if r["steps"] is None else str(r["steps"])
            for r in rows if r["kind"] == "steps" and r["target"] == t) + " |")
    b, k = NOISE_RUN[preset]
    setup = (
        f"Same model, data, budget and lr protocol as experiment 1 ({base.model}, ghost BN "
        f"{base.bn_ghost_size}, {base.epochs:g} epochs, SGD+momentum, lr = base lr x "
        f"B/{base.base_batch_size}, 3-point 2x grid around the prediction extended at edges). "
        f"Steps to target for B >= {base.base_batch_size} come from experiment 1's seed-0 "
        f"runs (`../linear_scaling_warmup/rows.jsonl`); B in {SMALL_BATCHES[preset]} are run "
        f"here (no warmup: below the base batch the linear rule lowers the lr). Test error is "
        f"evaluated every max(0.1 epoch, 1 step); the steps of a batch are the fewest over "
        f"its lr grid. B_simple: a B={b} run as {k} accumulation micro-batches of {b // k} "
        f"(same BN groups as experiment 1), base lr {ls.LR_CENTRE['sgd']}, seeds "
        f"{list(NOISE_SEEDS[preset])}, logged every step; two-batch estimators (McCandlish et "
        f"al. app. A) with B_small={b // k}, B_big={b}; EMA {EMA} of numerator and denominator "
        f"separately; read at the first evaluation at which that run reaches the target.")
    limits_txt = (
        harness.preset_note(preset) + " "
        + ("The targets are test errors reachable by a 2-layer MLP in 6 epochs, not training "
           "losses; steps are read on a grid of evaluations (0.1 epoch, so the smallest "
           "batches' steps are rounded up by up to 0.1 epoch), and on a fixed epoch budget "
           "with a cosine schedule whose length is set by the budget: batches that do not "
           "reach a target in 6 epochs drop out of its fit (marked 'not reached'), which "
           "leaves the large-batch end of the curve unmeasured for the harder targets. The "
           "lr grid is tuned on one seed; the bootstrap resamples batch sizes, not seeds. "
           "B_simple equals McCandlish's B_noise only for a well-conditioned Hessian."
           if preset == "cpu" else "")
        + "\n\n" + harness.run_time_note(raw, timer) + f" Machine: {harness.environment_note()}, "
        "shared with other work, so times are indicative only.")
    write_report(
        out, title="Critical batch (McCandlish et al.): steps to target vs gradient noise scale",
        intro=("Raw rows: `rows.jsonl` (steps to each target per batch, and B_simple per "
               "seed and target); per run `runs/<run>/metrics.jsonl`."),
        sections=[Section("Setup", setup),
                  Section("Verdict (criterion fixed in code before the runs)",
                          NOISE_SCALE.section(rows)),
                  Section("Steps to target", "\n".join(tab) + "\n", images),
                  Section("Limits of the evidence", limits_txt)],
    )
    result = {
        "preset": preset, "claim": NOISE_SCALE.claim, "criterion": NOISE_SCALE.rule,
        "verdict": verdict, "details": details,
        "fits": {k: {kk: v for kk, v in f.items() if kk != "points"} for k, f in fits.items()},
        "b_simple": [r for r in rows if r["kind"] == "b_simple"],
    }
    def b_simple_at(t: float) -> float:
        v = [r["b_simple"] for r in rows if r["kind"] == "b_simple" and r["target"] == t
             and r["b_simple"] is not None]
        return float(np.mean(v)) if v else math.nan

    decided = [f"{100 * float(k):g}% error: B_crit {f['b_crit']:.0f} [{f['lo']:.0f}, "
               f"{f['hi']:.0f}] vs B_simple {b_simple_at(float(k)):.0f}"
               for k, f in fits.items() if math.isfinite(f["lo"])]
    result["headline"] = (f"{verdict}; " + "; ".join(decided) if decided else verdict)
    harness.save_json(result, out / "summary.json")
    return result


def main(argv: list[str] | None = None) -> dict | None:
    p = harness.experiment_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--exp1", default=None,
                   help="Results folder of experiment 1 (default: the same preset's).")
    p.add_argument("--run-only", action="store_true", help="Run without writing the report.")
    args = p.parse_args(argv)
    exp1 = Path(args.exp1) if args.exp1 else harness.default_out(ls.NAME, args.preset)
    out = Path(args.out) if args.out else harness.default_out(NAME, args.preset)
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(args.preset)
    timer = None if args.report_only else harness.Timer()
    if not args.report_only:
        harness.enable_compilation_cache()
        harness.run_adaptive(base, lambda rows: plan(args.preset, base,
                                                flat_rows(rows, out / "runs")),
                        out / "runs", max_minutes=args.max_minutes)
    if args.run_only:
        return None
    return analyse(args.preset, base, out, timer, exp1)


if __name__ == "__main__":
    main()
