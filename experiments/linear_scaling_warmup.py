"""Experiment 1: linear learning-rate scaling and gradual warmup (Goyal et al. 2017).

Claim (seed 004, "double the batch, double the lr"; Goyal et al.): with a fixed epoch
budget, scaling the learning rate linearly with the batch size (lr = lr0 * B / B0) plus a
gradual warmup keeps accuracy flat up to a large batch (8k for ResNet-50 on ImageNet);
without warmup, or with other rules, large batches lose accuracy. LARS and CLARS are
meant to push the limit further.

For every batch size, method (optimizer x lr rule x warmup) and base learning rate of a
small grid, one run with the same number of epochs; the report keeps the best base lr per
(method, batch size) cell.

Usage:
  python experiments/linear_scaling_warmup.py --preset cpu    # ~16 min on 2 CPU cores (144 runs)
  python experiments/linear_scaling_warmup.py --preset full   # GPU, CIFAR-10
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lars_jax import experiment_utils as xu  # noqa: E402
from lars_jax.plotting import plot_lines  # noqa: E402
from lars_jax.report import Section, write_report  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "linear_scaling_warmup"
# A batch size counts as "within the flat region" when its best accuracy is within this
# many percentage points of the best accuracy at any batch size.
FLAT_PP = 2.0


def methods(preset: str) -> list[xu.Method]:
    """The lines of the plot: optimizer x lr rule x warmup.

    With Goyal's warmup from the unscaled lr, "no scaling" has nothing to warm up (the
    start is the peak), so it appears once per optimizer: 5 methods per optimizer, 15 in
    all (every preset but smoke).
    """
    warm = 0.1 if preset == "full" else 0.25  # fraction of the epoch budget
    names = {"sgd": "SGD", "lars": "LARS", "clars": "CLARS"}
    ms = []
    # priority order: runs are made in this order (a time budget may stop the tail)
    for rule, w in [("linear", True), ("linear", False), ("sqrt", True), ("none", False),
                    ("sqrt", False)]:
        for opt in ("sgd", "lars", "clars"):
            label = (f"{names[opt]}, no scaling" if rule == "none" else
                     f"{names[opt]}, {rule}, {'warmup' if w else 'no warmup'}")
            ms.append(xu.Method(label, dict(optimizer=opt, lr_scaling=rule,
                                            warmup_frac=warm if w else 0.0)))
    return ms


# Base learning rates at base_batch_size, per optimizer (the "small lr grid").
LR_GRID = {
    "smoke": {"sgd": [0.1], "lars": [1.0], "clars": [1.0]},
    "cpu": {"sgd": [0.025, 0.1, 0.4], "lars": [0.25, 1.0, 4.0], "clars": [0.25, 1.0, 4.0]},
    "full": {"sgd": [0.05, 0.1, 0.2], "lars": [0.5, 1.0, 2.0], "clars": [0.5, 1.0, 2.0]},
}
BATCH_SIZES = {
    "smoke": [32, 64],
    "cpu": [32, 256, 2048, 8192],
    "full": [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
}
MAX_MICRO = {"smoke": 64, "cpu": 8192, "full": 1024}


def base_config(preset: str) -> TrainConfig:
    common = dict(dtype="float32", trust_coefficient=0.001,
                  optimizer="sgd", base_batch_size=256, momentum=0.9, weight_decay=5e-4,
                  schedule="cosine", warmup_start="base", checkpoint_every_steps=-1,
                  plot=False, progress=False, label_smoothing=0.0)
    if preset == "full":
        return TrainConfig(model="resnet20", width=1.0, dataset="cifar10", epochs=30,
                           eval_every_epochs=5, log_every_steps=10, **common)
    if preset == "smoke":
        return TrainConfig(model="resnet8", width=0.25, dataset="fashion_mnist",
                           train_subset=128, test_subset=128, epochs=1, eval_every_epochs=0,
                           crop_padding=0, flip=False, num_devices=1, log_every_steps=2,
                           **common)
    # an MLP with BN: ~40k images/s on 2 CPU cores (a 4-channel ResNet-8 runs ~1.5k)
    return TrainConfig(model="mlp2", width=1.0, dataset="fashion_mnist", epochs=2,
                       eval_every_epochs=0, crop_padding=0, flip=False, num_devices=1,
                       log_every_steps=50, **common)


def point(o: dict, b: int, lr: float, preset: str, base: TrainConfig) -> dict:
    """The run of method overrides `o` at batch `b` and base lr `lr`.

    At the base batch size every lr rule gives the same rate, so the rule is written as
    "none" there, and with the rule "none" a warmup from the unscaled lr is a constant, so it
    is written as no warmup: the methods that differ only in these share one run.
    """
    o = dict(o)
    if b == base.base_batch_size:
        o["lr_scaling"] = "none"
    if o["lr_scaling"] == "none" and base.warmup_start == "base":
        o["warmup_epochs"] = 0.0  # warmup from the unscaled lr to itself: a constant
    return {**o, "batch_size": b,
            "grad_accum_steps": max(1, b // MAX_MICRO[preset]), "learning_rate": lr}


def points(preset: str, base: TrainConfig) -> list[dict]:
    pts: list[dict] = []
    for m in _method_list(preset, base):
        for b in BATCH_SIZES[preset]:
            for lr in LR_GRID[preset][m.overrides["optimizer"]]:
                p = point(dict(m.overrides), b, lr, preset, base)
                if p not in pts:
                    pts.append(p)
    return pts[:1] if preset == "smoke" else pts


def _method_list(preset: str, base: TrainConfig) -> list[xu.Method]:
    out = []
    for m in methods(preset):
        o = dict(m.overrides)
        frac = o.pop("warmup_frac")
        o["warmup_epochs"] = round(frac * base.epochs, 6)
        out.append(xu.Method(m.label, o))
    return out


def _opt_of(m: xu.Method) -> str:
    return m.overrides["optimizer"]


def scaled_lr(row: dict) -> float:
    c = xu.config_of(row)
    k = c["batch_size"] / c["base_batch_size"]
    f = {"linear": k, "sqrt": math.sqrt(k), "none": 1.0}[c["lr_scaling"]]
    return c["learning_rate"] * f


def analyse(preset: str, base: TrainConfig, rows: list[dict], out: Path,
            timer: xu.Timer | None) -> dict:
    ms = _method_list(preset, base)
    batches = BATCH_SIZES[preset]
    # best base lr per (method, batch size); a run may serve several methods (see point())
    cells: dict[tuple[str, int], dict] = {}
    flat_rows = []
    for m in ms:
        for b in batches:
            for lr in LR_GRID[preset][m.overrides["optimizer"]]:
                want = point(dict(m.overrides), b, lr, preset, base)
                r = next((r for r in rows if all(
                    xu._same(xu.config_of(r).get(k), v) for k, v in want.items())), None)
                if r is None:
                    continue
                acc = xu.final_accuracy(r)
                flat_rows.append({"method": m.label, "batch_size": b, "learning_rate": lr,
                                  "peak_lr": scaled_lr(r), "outcome": xu.outcome(r),
                                  "test_accuracy": acc if math.isfinite(acc) else None,
                                  "run": r.get("run"), "time_s": r.get("time_s")})
                best = cells.get((m.label, b))
                if best is None or (math.isfinite(acc) and not acc <= best["acc"]):
                    cells[(m.label, b)] = {"acc": acc, "lr": lr, "peak": scaled_lr(r),
                                           "outcome": xu.outcome(r)}
    with open(out / "rows.jsonl", "w") as f:
        for fr in flat_rows:
            f.write(json.dumps(fr) + "\n")

    def series_of(labels: list[str]) -> dict:
        return {lab: (batches, [cells.get((lab, b), {"acc": math.nan})["acc"]
                                for b in batches]) for lab in labels}

    ylabel = "final test accuracy" + (
        " (best lr of the grid)" if max(map(len, LR_GRID[preset].values())) > 1 else "")
    where = f"{base.epochs:g} epochs, {base.dataset}, {base.model} x{base.width:g}"
    # the claim's lines in one plot, then every rule/warmup variant per optimizer
    key_lines = [lab for lab in ("SGD, linear, warmup", "SGD, linear, no warmup",
                                 "SGD, no scaling", "LARS, linear, warmup",
                                 "CLARS, linear, no warmup") if any(m.label == lab for m in ms)]
    plots = [plot_lines(series_of(key_lines), out / "accuracy_vs_batch.png",
                        xlabel="batch size (log2)", ylabel=ylabel,
                        title=f"Fixed budget ({where})", logx=2, xticks=batches,
                        hlines={"chance (10 classes)": 0.1})]
    for opt, name in (("sgd", "SGD"), ("lars", "LARS"), ("clars", "CLARS")):
        labels = [m.label for m in ms if _opt_of(m) == opt]
        if len(labels) > 1:
            plots.append(plot_lines(series_of(labels), out / f"accuracy_vs_batch_{opt}.png",
                                    xlabel="batch size (log2)", ylabel=ylabel,
                                    title=f"{name}: lr rules and warmup ({where})", logx=2,
                                    xticks=batches, hlines={"chance (10 classes)": 0.1}))

    # table: rows method, columns batch size: "acc (base lr -> peak lr)"
    header = "| method | " + " | ".join(f"B={b}" for b in batches) + " |"
    lines = [header, "| :-- |" + " :-- |" * len(batches)]
    for m in ms:
        cells_txt = []
        for b in batches:
            c = cells.get((m.label, b))
            if c is None:
                cells_txt.append("not run")
            elif not math.isfinite(c["acc"]):
                cells_txt.append(c["outcome"] + " (all lrs)")
            else:
                grid = LR_GRID[preset][_opt_of(m)]
                edge = "+" if len(grid) > 1 and c["lr"] in (min(grid), max(grid)) else ""
                cells_txt.append(f"{100 * c['acc']:.1f}% (lr0 {c['lr']:g}{edge} -> "
                                 f"{c['peak']:.3g})")
        lines.append(f"| {m.label} | " + " | ".join(cells_txt) + " |")
    table = "\n".join(lines) + "\n" + (
        "\n`+`: the best lr is at an edge of the grid (a better one may lie outside).\n"
        if max(map(len, LR_GRID[preset].values())) > 1 else "")

    # verdicts
    best_per_b = {b: max([cells[(m.label, b)]["acc"] for m in ms
                          if (m.label, b) in cells and math.isfinite(cells[(m.label, b)]["acc"])],
                         default=math.nan) for b in batches}
    finite = [v for v in best_per_b.values() if math.isfinite(v)]
    overall = max(finite) if finite else math.nan
    flat = [b for b in batches if math.isfinite(best_per_b[b])
            and 100 * (overall - best_per_b[b]) <= FLAT_PP]
    b_crit = max(flat) if flat else None

    def method_flat_limit(label: str) -> int | None:
        ok = [b for b in batches if (label, b) in cells and math.isfinite(cells[(label, b)]["acc"])
              and 100 * (overall - cells[(label, b)]["acc"]) <= FLAT_PP]
        return max(ok) if ok else None

    limits = {m.label: method_flat_limit(m.label) for m in ms}

    def acc_at(label: str, b: int) -> float:
        return cells.get((label, b), {"acc": math.nan})["acc"]

    def cell_text(label: str, b: int) -> str:
        c = cells.get((label, b))
        if c is None:
            return "not run"
        return xu.fmt_acc(c["acc"]) if math.isfinite(c["acc"]) else c["outcome"]

    lw, lnw = "SGD, linear, warmup", "SGD, linear, no warmup"
    run_b = [b for b in batches if (lw, b) in cells]
    big = max(run_b) if run_b else batches[-1]
    warm_gain = [100 * (acc_at(lw, b) - acc_at(lnw, b)) for b in batches
                 if b > base.base_batch_size and math.isfinite(acc_at(lw, b))
                 and math.isfinite(acc_at(lnw, b))]
    verdict = [
        f"- Best accuracy over all cells: {xu.fmt_acc(overall)}. With a {FLAT_PP:g}-point "
        f"tolerance, the best method stays on that level up to batch size "
        f"**{b_crit}** (the critical batch size visible here; experiment 5 compares it "
        f"with the gradient noise scale)"
        + (" - the smallest batch of the grid, so the critical batch size of this budget is "
           f"at most {b_crit}." if b_crit == min(batches) else "."),
        "- Largest batch size within the tolerance, per method: "
        + ", ".join(f"{k}: {v if v is not None else 'none'}" for k, v in limits.items()) + ".",
    ]
    if warm_gain:
        mean_gain = sum(warm_gain) / len(warm_gain)
        effect = "helps" if mean_gain > 1 else "hurts" if mean_gain < -1 else "no clear effect"
        verdict.append(
            f"- Gradual warmup with the linear rule at batch > {base.base_batch_size}: "
            f"{mean_gain:+.1f} points on average vs. no warmup over {len(warm_gain)} batch "
            f"sizes ({effect}; threshold 1 point)."
        )
    lin_lim, none_lim = limits.get(lw), limits.get("SGD, no scaling")
    if run_b and (lin_lim is None or big > lin_lim):
        verdict.append(
            f"- Linear scaling + warmup does **not** keep accuracy flat up to {big} in this "
            f"budget ("
            + (f"flat up to {lin_lim}" if lin_lim is not None else
               f"never within {FLAT_PP:g} points of the best cell")
            + "); the claim's \"flat up to 8k\" is not reproduced at this scale."
        )
    elif run_b:
        verdict.append(f"- Linear scaling + warmup keeps accuracy flat up to {big}.")
    if none_lim is not None and lin_lim is not None:
        verdict.append(
            f"- Without lr scaling the flat region ends at {none_lim}, with linear scaling and "
            f"warmup at {lin_lim}."
        )
    b0 = base.base_batch_size
    rel = {}
    for m in ms:
        a0 = acc_at(m.label, b0)
        larger = [(b, acc_at(m.label, b)) for b in batches if b > b0 and (m.label, b) in cells]
        if math.isfinite(a0) and larger:
            rel[m.label] = (a0, larger)
    if lw in rel:
        a0, larger = rel[lw]
        verdict.append(
            f"- Against its own accuracy at the base batch {b0} (where all lr rules coincide), "
            f"SGD with linear scaling + warmup goes from {xu.fmt_acc(a0)} to "
            + ", ".join(f"{xu.fmt_acc(a)} at {b}" for b, a in larger)
            + f" (linear scaling keeps accuracy if the drop is within {FLAT_PP:g} points: "
            + ("**yes**" if all(100 * (a0 - a) <= FLAT_PP for _, a in larger) else "**no**")
            + ").")
    lars_lim = limits.get("LARS, linear, warmup")
    clars_lim = limits.get("CLARS, linear, no warmup")
    verdict.append(
        f"- At the largest batch ({big}): "
        + ", ".join(f"{m.label} {cell_text(m.label, big)}" for m in ms) + "."
    )
    if lars_lim is not None or clars_lim is not None:
        verdict.append(f"- LARS flat up to {lars_lim or 'none'}, CLARS (no warmup) up to "
                       f"{clars_lim or 'none'} ('none': never within {FLAT_PP:g} points of the "
                       f"best cell).")
    # where does the best peak lr go? (the rules are hypotheses about exactly this)
    exponents: dict[str, float] = {}
    for opt, name in (("sgd", "SGD"), ("lars", "LARS"), ("clars", "CLARS")):
        best_b = {}
        for b in batches:
            cands = [cells[(m.label, b)] for m in ms if _opt_of(m) == opt
                     and (m.label, b) in cells and math.isfinite(cells[(m.label, b)]["acc"])]
            if cands:
                best_b[b] = max(cands, key=lambda c: c["acc"])
        if b0 in best_b and len(best_b) > 1:
            bmax = max(best_b)
            p = (math.log(best_b[bmax]["peak"] / best_b[b0]["peak"]) / math.log(bmax / b0)
                 if bmax != b0 else math.nan)
            if math.isfinite(p):
                exponents[name] = p
            verdict.append(
                f"- {name}, best of all its rules, warmups and lrs: "
                + ", ".join(f"B={b}: {xu.fmt_acc(c['acc'])} at peak lr {c['peak']:.3g}"
                            for b, c in sorted(best_b.items()))
                + (f"; the best peak lr grows like B^{p:.2f} from {b0} to {bmax} (linear rule: "
                   f"B^1, sqrt rule: B^0.5; the grid steps are 4x, so +-0.2 in the exponent)."
                   if math.isfinite(p) else "."))

    setup = (
        f"{len(batches)} batch sizes ({', '.join(map(str, batches))}), {len(ms)} methods, "
        f"base lr grid per optimizer {LR_GRID[preset]} at base batch "
        f"{base.base_batch_size} (peak lr = lr0 x B/{base.base_batch_size} for linear, x "
        f"sqrt(B/{base.base_batch_size}) for sqrt). Every run: {base.epochs:g} epochs of "
        f"{base.train_subset or 'all'} {base.dataset} training images, {base.model} width "
        f"{base.width:g} ({base.norm} norm), momentum {base.momentum}, weight decay "
        f"{base.weight_decay}, {base.schedule} decay after warmup; warmup (when on) lasts "
        f"{_method_list(preset, base)[0].overrides['warmup_epochs']:g} epochs from the "
        f"unscaled lr (Goyal's gradual warmup). Batches above {MAX_MICRO[preset]} use "
        f"gradient accumulation over micro-batches of {MAX_MICRO[preset]} (BN statistics "
        f"per micro-batch). Test accuracy on {base.test_subset or 'all'} test images after "
        f"the last step.\n\n" + xu.base_config_table(
            base, ["model", "width", "norm", "dataset", "train_subset", "test_subset",
                   "epochs", "base_batch_size", "momentum", "weight_decay", "schedule",
                   "trust_coefficient", "clars_granularity", "seed"])
    )
    exp2 = out.parent / "clars_no_warmup" / "summary.json"
    stds = []
    if exp2.exists():
        stds = [v.get("std") for v in json.loads(exp2.read_text()).get("stats", {}).values()
                if isinstance(v.get("std"), float) and v.get("n", 0) > 1]
    seed_note = (f"experiment 2 measured seed-to-seed standard deviations of up to "
                 f"{100 * max(stds):.1f} points at its large batch sizes, so differences of a "
                 f"few points between large-batch cells are not significant." if stds else
                 "the seed-to-seed spread was not measured for these cells.")
    limits_txt = (
        xu.preset_note(preset) + " "
        + ("Reductions vs. the claim's setting: an MLP with two hidden layers of 256 units "
           "and BatchNorm instead of ResNet-50 (XLA's CPU convolutions make even a tiny "
           "ResNet ~25x slower), Fashion-MNIST (60k images) and 2 epochs instead of ImageNet "
           "and 90 epochs, 4 batch sizes (32, the base 256, 2048, 8192), a 3-point lr grid "
           "spaced by 4x, one seed. LARS/CLARS "
           "apply the global lr unadapted to BN and bias parameters (the MLPerf convention). "
           "At batch 8192 the whole budget is 14 optimizer steps, so the large-batch end "
           "measures how far each method gets in very few steps, not the asymptotic "
           "accuracy; the critical batch size found here is that of this budget and says "
           "nothing about ImageNet's 8k. A best lr at the edge of its grid (marked in the "
           "rows) means a better lr may lie outside. One seed per cell: "
           + seed_note
           if preset == "cpu" else "")
        + "\n\n" + xu.run_time_note(rows, timer) + f" Machine: {xu.environment_note()}."
    )
    write_report(
        out, title="Linear LR scaling and gradual warmup (Goyal et al. 2017)",
        intro=("**Claim.** With the lr scaled linearly in the batch size and a gradual "
               "warmup, accuracy at a fixed epoch budget stays flat up to a large batch; LARS "
               "and CLARS extend the range. Raw rows: `rows.jsonl` (one per run), "
               "`runs/results.jsonl` and `runs/<run>/metrics.jsonl`."),
        sections=[
            Section("Setup", setup),
            Section("Results: best lr per cell", table, plots),
            Section("Verdict", "\n".join(verdict)),
            Section("Limits of the evidence", limits_txt),
        ],
    )
    gain = (sum(warm_gain) / len(warm_gain)) if warm_gain else math.nan
    best_cell = max(((k, v["acc"]) for k, v in cells.items() if math.isfinite(v["acc"])),
                    key=lambda kv: kv[1], default=None)
    held = [m.label for m in ms if m.label in rel
            and all(100 * (rel[m.label][0] - a) <= FLAT_PP for _, a in rel[m.label][1])]
    top_big = sorted(((m.label, acc_at(m.label, big)) for m in ms
                      if math.isfinite(acc_at(m.label, big))), key=lambda t: -t[1])[:3]
    headline = (
        ("Not reproduced at this scale: " if lw in rel and lw not in held else
         "Supported: " if lw in held else "")
        + (f"with a fixed {base.epochs:g}-epoch budget, SGD + linear scaling + warmup goes from "
           f"{xu.fmt_acc(rel[lw][0])} at the base batch {b0} to "
           + ", ".join(f"{xu.fmt_acc(a)} at {b}" for b, a in rel[lw][1]) + "; "
           if lw in rel else "")
        + (f"warmup {gain:+.1f} points vs none above batch {b0}; " if math.isfinite(gain) else "")
        + (f"methods that hold their base-batch accuracy: {', '.join(held)}; " if held else
           "no method (LARS, CLARS, sqrt, no scaling) holds its base-batch accuracy; ")
        + (f"best cell {xu.fmt_acc(best_cell[1])} ({best_cell[0][0]}, batch "
           f"{best_cell[0][1]}); critical batch "
           f"{'<= ' if b_crit == min(batches) else ''}{b_crit}" if best_cell else "")
        + (f"; at batch {big} the best cells are "
           + ", ".join(f"{lab} {xu.fmt_acc(a)}" for lab, a in top_big)
           if top_big else "")
        + ("; the best peak lr grows like "
           + ", ".join(f"B^{p:.2f} ({name})" for name, p in exponents.items())
           + " (linear rule: B^1)" if exponents else "") + ".")
    result = {"headline": headline, "critical_batch_size": b_crit,
              "critical_batch_is_grid_minimum": b_crit == min(batches),
              "flat_tolerance_pp": FLAT_PP,
              "best_accuracy": overall, "best_per_batch": best_per_b,
              "flat_limit_per_method": limits, "best_peak_lr_exponent": exponents,
              "preset": preset}
    xu.save_json(result, out / "summary.json")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = xu.experiment_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    run = xu.run_experiment(NAME, args, base_config, points)
    return analyse(args.preset, run.base, run.rows, run.out, run.timer)


if __name__ == "__main__":
    main()
