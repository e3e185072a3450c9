"""Experiment 2: "Large batch training does not need warmup" (CLARS, Huo et al. 2020).

Claim: at large batch sizes CLARS without warmup trains as well as or better than LARS
with gradual warmup (and much better than LARS without warmup), because its
per-example-norm denominator damps the early steps by itself.

At the largest batch sizes of the preset, four methods, several seeds each:
CLARS without warmup, LARS with warmup, LARS without warmup, SGD (linear rule) with
warmup. Test accuracy is evaluated several times per epoch to show the first epochs.

Usage:
  python experiments/clars_no_warmup.py --preset cpu
  python experiments/clars_no_warmup.py --preset full
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from lars_jax import experiment_utils as xu  # noqa: E402
from lars_jax.report import Section, write_report  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "clars_no_warmup"
# "as good as" means within this many points of the mean; "much better" above it.
MARGIN_PP = 1.0

SEEDS = {"smoke": [0], "cpu": [0, 1, 2, 3, 4], "full": [0, 1, 2]}
BATCH_SIZES = {"smoke": [64], "cpu": [2048, 8192], "full": [8192, 16384]}
MAX_MICRO = {"smoke": 64, "cpu": 8192, "full": 1024}
# per-optimizer base learning rate at base_batch_size (linear rule to the batch size)
LR = {"sgd": 0.1, "lars": 1.0, "clars": 1.0}


def base_config(preset: str) -> TrainConfig:
    common = dict(dtype="float32", trust_coefficient=0.001,
                  base_batch_size=256, lr_scaling="linear", momentum=0.9,
                  weight_decay=5e-4, schedule="cosine", checkpoint_every_steps=-1,
                  plot=False, progress=False, clars_granularity="example")
    if preset == "full":
        return TrainConfig(model="resnet20", dataset="cifar10", epochs=30,
                           eval_every_epochs=1, log_every_steps=5, **common)
    if preset == "smoke":
        return TrainConfig(model="resnet8", width=0.25, dataset="fashion_mnist",
                           train_subset=128, test_subset=128, epochs=1, eval_every_epochs=0.5,
                           crop_padding=0, flip=False, num_devices=1, log_every_steps=1,
                           **common)
    # an MLP with BN (fast on CPU), all 60k Fashion-MNIST images, 6 epochs
    return TrainConfig(model="mlp2", width=1.0, dataset="fashion_mnist", epochs=6,
                       eval_every_epochs=0.5, crop_padding=0, flip=False, num_devices=1,
                       log_every_steps=1, **common)


def methods(base: TrainConfig) -> list[xu.Method]:
    warm = round(0.25 * base.epochs, 6)
    return [
        xu.Method("CLARS, no warmup", dict(optimizer="clars", warmup_epochs=0.0,
                                           learning_rate=LR["clars"])),
        xu.Method("LARS, warmup", dict(optimizer="lars", warmup_epochs=warm,
                                       learning_rate=LR["lars"])),
        xu.Method("LARS, no warmup", dict(optimizer="lars", warmup_epochs=0.0,
                                          learning_rate=LR["lars"])),
        xu.Method("SGD, warmup", dict(optimizer="sgd", warmup_epochs=warm,
                                      learning_rate=LR["sgd"])),
    ]


def points(preset: str, base: TrainConfig) -> list[dict]:
    pts = []
    # seeds outermost: a time budget cuts seeds, not methods
    for s in SEEDS[preset]:
        for b in BATCH_SIZES[preset]:
            for m in methods(base):
                pts.append({**m.overrides, "batch_size": b,
                            "grad_accum_steps": max(1, b // MAX_MICRO[preset]), "seed": s})
    return pts[:1] if preset == "smoke" else pts  # smoke: CLARS, one seed


def analyse(preset: str, base: TrainConfig, rows: list[dict], out: Path,
            timer: xu.Timer | None) -> dict:
    import json

    from lars_jax.plotting import plot_lines

    ms = methods(base)
    batches = BATCH_SIZES[preset]
    stats: dict[tuple[str, int], dict] = {}
    curves: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    with open(out / "rows.jsonl", "w") as f:
        for r in rows:
            c = xu.config_of(r)
            label = xu.method_of(r, ms)
            acc = xu.final_accuracy(r)
            key = (label, c["batch_size"])
            stats.setdefault(key, {"accs": [], "outcomes": [], "seeds": []})
            stats[key]["accs"].append(acc)
            stats[key]["seeds"].append(c["seed"])
            stats[key]["outcomes"].append(xu.outcome(r))
            metrics = xu.read_metrics(r, out / "runs")
            xs, ys = xu.curve([m for m in metrics if m.get("kind") == "eval"], "test_accuracy")
            curves.setdefault(key, []).append((xs, ys))
            f.write(json.dumps({"method": label, "batch_size": c["batch_size"],
                                "seed": c["seed"], "learning_rate": c["learning_rate"],
                                "warmup_epochs": c["warmup_epochs"], "outcome": xu.outcome(r),
                                "test_accuracy": acc if math.isfinite(acc) else None,
                                "curve_epoch": xs.tolist(), "curve_test_accuracy": ys.tolist(),
                                "time_s": r.get("time_s")}) + "\n")

    images = []
    for b in batches:
        # mean curve per method (over seeds that share the eval points)
        series = {}
        for m in ms:
            cs = [c for c in curves.get((m.label, b), []) if len(c[0])]
            if not cs:
                continue
            n = min(len(c[0]) for c in cs)
            xs = cs[0][0][:n]
            ys = np.mean([c[1][:n] for c in cs], axis=0)
            series[f"{m.label} (mean of {len(cs)})"] = (xs.tolist(), ys.tolist())
        if series:
            images.append(plot_lines(
                series, out / f"curves_b{b}.png", xlabel="epoch",
                ylabel="test accuracy (mean over seeds)",
                title=f"Batch {b}: test accuracy during training",
                hlines={"chance (10 classes)": 0.1}))
        # final accuracy per seed, per method
        per_seed = {}
        for m in ms:
            st = stats.get((m.label, b), {"accs": [], "seeds": []})
            per_seed[m.label] = (st["seeds"], st["accs"])
        if any(len(v[0]) for v in per_seed.values()):
            images.append(plot_lines(
                per_seed, out / f"final_by_seed_b{b}.png", xlabel="seed",
                ylabel="final test accuracy", title=f"Batch {b}: final accuracy per seed",
                xticks=SEEDS[preset]))

    lines = ["| batch | method | final test accuracy, mean ± std | min .. max | outcomes |",
             "| --: | :-- | :-- | :-- | :-- |"]
    summary = {}
    for b in batches:
        for m in ms:
            st = stats.get((m.label, b))
            if st is None:
                continue
            ms_ = xu.mean_spread(st["accs"])
            summary[f"{m.label} @ {b}"] = ms_
            rng = (f"{100 * ms_['min']:.1f} .. {100 * ms_['max']:.1f}%" if ms_["n"] else "–")
            outs = ", ".join(f"{o}: {st['outcomes'].count(o)}" for o in sorted(set(st["outcomes"])))
            lines.append(f"| {b} | {m.label} | {xu.fmt_pm(ms_)} | {rng} | {outs} |")
    table = "\n".join(lines) + "\n"

    verdict = []
    for b in batches:
        def mean(label: str, b: int = b) -> float:
            return summary.get(f"{label} @ {b}", {"mean": math.nan})["mean"]

        def spread(label: str, b: int = b) -> float:
            return summary.get(f"{label} @ {b}", {"std": math.nan})["std"]

        c, lw, lnw, sw = (mean("CLARS, no warmup"), mean("LARS, warmup"),
                          mean("LARS, no warmup"), mean("SGD, warmup"))
        if not math.isfinite(c):
            verdict.append(f"- Batch {b}: CLARS without warmup produced no finished run.")
            continue
        d_lw = 100 * (c - lw) if math.isfinite(lw) else math.nan
        d_lnw = 100 * (c - lnw) if math.isfinite(lnw) else math.nan
        noise = 100 * max(spread("CLARS, no warmup"), spread("LARS, warmup"))
        if not math.isfinite(d_lw):
            verdict.append(f"- Batch {b}: CLARS without warmup {xu.fmt_acc(c)}; LARS with "
                           f"warmup has no finished run, so no comparison.")
            continue
        if d_lw > max(MARGIN_PP, noise):
            word = "better than"
        elif d_lw >= -max(MARGIN_PP, noise):
            word = "as good as (within noise)"
        else:
            word = "worse than"
        verdict.append(
            f"- Batch {b}: CLARS without warmup {xu.fmt_acc(c)} vs LARS with warmup "
            f"{xu.fmt_acc(lw)} ({d_lw:+.1f} points) -> CLARS is **{word}** LARS+warmup "
            f"(threshold: {MARGIN_PP:g} point or the larger seed std, {noise:.1f}). "
            f"vs LARS without warmup {xu.fmt_acc(lnw)} ({d_lnw:+.1f}); SGD with warmup "
            f"{xu.fmt_acc(sw)}."
        )
        if math.isfinite(d_lnw):
            verdict.append(
                "  Warmup-free LARS is " + ("clearly worse than CLARS" if d_lnw > max(
                    MARGIN_PP, noise) else "not clearly worse than CLARS")
                + " here, so " + ("the claim that CLARS removes the need for warmup where LARS "
                                  "needs it is supported at this scale."
                                  if d_lnw > max(MARGIN_PP, noise) and word != "worse than"
                                  else "this run does not show CLARS fixing a warmup problem "
                                       "of LARS at this scale.")
            )

    means = [v["mean"] for v in summary.values() if v["n"]]
    if means and max(means) < 0.3:
        verdict.append(
            f"- Every method stays below 30% test accuracy (best mean {100 * max(means):.1f}%), "
            f"so these are comparisons between barely trained models: at this scale the claim "
            f"is neither confirmed nor refuted.")
    setup = (
        f"Batch sizes {batches}; seeds {SEEDS[preset]}; base lrs at batch "
        f"{base.base_batch_size} {LR} scaled linearly to the batch size; warmup (when on) "
        f"{ms[1].overrides['warmup_epochs']:g} of {base.epochs:g} epochs from 0 "
        f"(warmup_start={base.warmup_start}); {base.schedule} decay; CLARS denominator: mean "
        f"of exact per-example gradient norms (clars_granularity={base.clars_granularity}; "
        f"the CLARS rule is the project's reading of the paper, marked unverified in "
        f"lars_jax.scale_by_clars_trust_ratio). Micro-batches of at most "
        f"{MAX_MICRO[preset]} examples (gradient "
        f"accumulation above). Test accuracy evaluated every {base.eval_every_epochs:g} "
        f"epochs on {base.test_subset or 'all'} test images.\n\n"
        + xu.base_config_table(base, ["model", "width", "norm", "dataset", "train_subset",
                                      "epochs", "momentum", "weight_decay",
                                      "trust_coefficient", "denominator"])
    )
    limits_txt = (
        xu.preset_note(preset) + " "
        + ("Reductions: batches 2048 and 8192 of the 60k Fashion-MNIST images (29 and 7 "
           "steps per epoch, 6 epochs: 174 and 42 steps) instead of ImageNet batches of "
           "8k-32k; an MLP with two hidden layers of 256 units and BatchNorm instead of a "
           "ResNet (XLA's CPU convolutions are ~25x slower); 5 seeds; one fixed base lr per "
           "optimizer with the linear rule (not tuned per method; experiment 1 shows how "
           "each method's best lr moves with the batch). Warmup lasts a quarter of the "
           "budget, which by itself handicaps the warmup methods in a short run."
           if preset == "cpu" else "")
        + "\n\n" + xu.run_time_note(rows, timer) + f" Machine: {xu.environment_note()}."
    )
    write_report(
        out, title="Does large-batch training need warmup? CLARS vs LARS (Huo et al.)",
        intro=("**Claim.** CLARS without warmup matches or beats LARS with gradual warmup at "
               "large batch sizes. Raw rows: `rows.jsonl` (per run, with the accuracy curve), "
               "`runs/results.jsonl`, `runs/<run>/metrics.jsonl`."),
        sections=[Section("Setup", setup), Section("Results", table, images),
                  Section("Verdict", "\n".join(verdict)),
                  Section("Limits of the evidence", limits_txt)],
    )
    parts = []
    for b in batches:
        vals = {m.label: summary.get(f"{m.label} @ {b}") for m in ms}
        if all(v and v["n"] for v in vals.values()):
            c, lw = vals["CLARS, no warmup"], vals["LARS, warmup"]
            diff = 100 * (c["mean"] - lw["mean"])
            noise = 100 * max(c["std"], lw["std"], MARGIN_PP / 100)
            best = max(v["mean"] for v in vals.values())
            word = ("Inconclusive (every method below 30% accuracy)" if best < 0.3 else
                    "Supported" if diff >= -MARGIN_PP else
                    "Within seed noise (CLARS lower on average)" if diff >= -noise else
                    "Not supported")
            parts.append(
                f"{word} at batch {b} ({c['n']} seeds): CLARS without warmup "
                f"{100 * c['mean']:.1f}% vs LARS with warmup {100 * lw['mean']:.1f}%, LARS "
                f"without {100 * vals['LARS, no warmup']['mean']:.1f}%, SGD with warmup "
                f"{100 * vals['SGD, warmup']['mean']:.1f}% (seed std up to {noise:.1f} points"
                f")")
    headline = ("; ".join(parts) + ".") if parts else "Incomplete: not every method finished."
    xu.save_json({"headline": headline, "stats": summary, "preset": preset},
                 out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = xu.experiment_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    run = xu.run_experiment(NAME, args, base_config, points)
    return analyse(args.preset, run.base, run.rows, run.out, run.timer)


if __name__ == "__main__":
    main()
