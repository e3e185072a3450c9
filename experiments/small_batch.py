"""Experiment 4: "Revisiting small batch training" (Masters & Luschi 2018, seed 002).

Claims: with plain SGD (no momentum), the base learning rate ``eta~ = eta / B`` (sum
formulation; holding it fixed is the linear scaling rule) and the same epoch budget for
every batch size, (i) the best test accuracy is reached at small batches (2..32; with BN
4..8), and (ii) the range of base learning rates that trains stably shrinks as the batch
grows. Run with and without BatchNorm.

Grid: batch size x base lr (powers of two) x {BN, no normalisation}; the heatmaps show
final test accuracy, the report lists the stable range per batch size.

Usage:
  python experiments/small_batch.py --preset cpu
  python experiments/small_batch.py --preset full
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lars_jax import experiment_utils as xu  # noqa: E402
from lars_jax.plotting import plot_heatmap, plot_lines  # noqa: E402
from lars_jax.report import Section, write_report  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "small_batch"
# A (batch, lr) cell "trains stably" when it finishes (no non-finite loss) with test accuracy
# above TRAIN_ACC (chance is 10%); it is "near best" when also within NEAR_PP points of the
# best accuracy at that batch size.
TRAIN_ACC = 0.2
NEAR_PP = 5.0

BATCH_SIZES = {"smoke": [16], "cpu": [2, 8, 32, 128, 512], "full": [2, 4, 8, 16, 32, 64, 128,
                                                                   256, 512, 1024]}
LOG2_LR = {"smoke": [-6], "cpu": [-12, -10, -8, -6, -4, -2], "full": list(range(-12, 1))}
NORMS = {"smoke": ["batch"], "cpu": ["batch", "none"], "full": ["batch", "none"]}


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
    # an MLP (with BN or without normalization): fast on CPU; 8192 training images
    return TrainConfig(model="mlp2", width=1.0, dataset="fashion_mnist", train_subset=8192,
                       epochs=3, schedule="step", eval_every_epochs=0, crop_padding=0,
                       flip=False, num_devices=1, log_every_steps=64, **common)


def points(preset: str) -> list[dict]:
    pts = [{"norm": n, "batch_size": b, "learning_rate": 2.0 ** e}
           for n in NORMS[preset] for b in BATCH_SIZES[preset] for e in LOG2_LR[preset]]
    return pts[:1] if preset == "smoke" else pts


def analyse(preset: str, base: TrainConfig, rows: list[dict], out: Path,
            timer: xu.Timer | None) -> dict:
    batches, exps = BATCH_SIZES[preset], LOG2_LR[preset]
    acc: dict[tuple[str, int, int], float] = {}
    outc: dict[tuple[str, int, int], str] = {}
    with open(out / "rows.jsonl", "w") as f:
        for r in rows:
            c = xu.config_of(r)
            e = int(round(math.log2(c["learning_rate"])))
            key = (c["norm"], c["batch_size"], e)
            acc[key] = xu.final_accuracy(r)
            outc[key] = xu.outcome(r)
            f.write(json.dumps({"norm": c["norm"], "batch_size": c["batch_size"],
                                "log2_base_lr": e, "base_lr": c["learning_rate"],
                                "mean_loss_lr": c["learning_rate"] * c["batch_size"],
                                "outcome": outc[key],
                                "test_accuracy": acc[key] if math.isfinite(acc[key]) else None,
                                "time_s": r.get("time_s")}) + "\n")
    images = []
    result: dict = {"preset": preset, "best": {}, "stable_range": {}, "near_best": {}}
    lines = []
    for norm in NORMS[preset]:
        # NaN only for diverged runs; a missing, failed or unfinished run is "n/a" (None)
        grid = [[acc.get((norm, b, e)) if outc.get((norm, b, e)) in ("ok", "diverged")
                 else None for b in batches] for e in reversed(exps)]
        images.append(plot_heatmap(
            grid, out / f"heatmap_{norm}.png", row_labels=[f"2^{e}" for e in reversed(exps)],
            col_labels=batches, xlabel="batch size B", ylabel="base lr eta~ = eta/B",
            title=f"Final test accuracy, plain SGD, norm={norm}", fmt="{:.2f}",
            colorbar_label="test accuracy", vmin=0.0, vmax=1.0, nonfinite_label="diverged"))
        best_b = {}
        lines.append(f"\n**norm = {norm}**\n")
        lines.append(f"| batch size | best accuracy | best base lr | base lrs that train "
                     f"stably (accuracy > {100 * TRAIN_ACC:.0f}%) | near best (within "
                     f"{NEAR_PP:g} pts) | diverged |")
        lines.append("| --: | --: | :-- | :-- | :-- | :-- |")
        for b in batches:
            vals = {e: acc.get((norm, b, e), math.nan) for e in exps}
            fin = {e: v for e, v in vals.items() if math.isfinite(v)}
            if not fin:
                lines.append(f"| {b} | – | – | none | none | all |")
                continue
            best_e = max(fin, key=fin.get)
            best = fin[best_e]
            stable = [e for e, v in fin.items() if v > TRAIN_ACC]
            near = [e for e in stable if 100 * (best - fin[e]) <= NEAR_PP]
            div = [e for e in exps if outc.get((norm, b, e)) == "diverged"]
            best_b[b] = best
            result["best"][f"{norm}/{b}"] = {"accuracy": best, "log2_lr": best_e}
            result["stable_range"][f"{norm}/{b}"] = stable
            result["near_best"][f"{norm}/{b}"] = near

            def rng(es: list[int]) -> str:
                return f"2^{min(es)} .. 2^{max(es)} ({len(es)} of {len(exps)})" if es else "none"

            lines.append(f"| {b} | {100 * best:.1f}% | 2^{best_e} | {rng(stable)} | {rng(near)} | "
                         f"{', '.join(f'2^{e}' for e in div) or '–'} |")
    # best accuracy vs batch, one line per norm
    series = {}
    for norm in NORMS[preset]:
        xs = [b for b in batches if f"{norm}/{b}" in result["best"]]
        series[f"norm={norm}"] = (xs, [result["best"][f"{norm}/{b}"]["accuracy"] for b in xs])
    if any(len(v[0]) for v in series.values()):
        images.append(plot_lines(series, out / "best_vs_batch.png", xlabel="batch size (log2)",
                                 ylabel="best test accuracy over the lr grid",
                                 title="Best accuracy per batch size", logx=2, xticks=batches))
    # stable width vs batch
    width_series = {}
    for norm in NORMS[preset]:
        xs = [b for b in batches if f"{norm}/{b}" in result["stable_range"]]
        width_series[f"norm={norm}: trains stably"] = (
            xs, [len(result["stable_range"][f"{norm}/{b}"]) for b in xs])
        width_series[f"norm={norm}: near best"] = (
            xs, [len(result["near_best"][f"{norm}/{b}"]) for b in xs])
    if any(len(v[0]) for v in width_series.values()):
        images.append(plot_lines(width_series, out / "stable_range_vs_batch.png",
                                 xlabel="batch size (log2)",
                                 ylabel=f"# base lrs (grid of {len(exps)})",
                                 title="Width of the stable base-lr range", logx=2,
                                 xticks=batches))

    # best accuracy per batch size, per norm (batch sizes with a finished run only)
    best_acc = {norm: {b: result["best"][f"{norm}/{b}"]["accuracy"] for b in batches
                       if f"{norm}/{b}" in result["best"]} for norm in NORMS[preset]}
    verdict = []
    for norm in NORMS[preset]:
        bb = best_acc[norm]
        if not bb:
            continue
        b_star = max(bb, key=bb.get)
        small = [b for b in bb if b <= 32]
        large = [b for b in bb if b > 32]
        best_small = max((bb[b] for b in small), default=math.nan)
        best_large = max((bb[b] for b in large), default=math.nan)
        widths = [len(result["stable_range"][f"{norm}/{b}"]) for b in batches
                  if f"{norm}/{b}" in result["stable_range"]]
        near_counts = [len(result["near_best"][f"{norm}/{b}"]) for b in batches
                       if f"{norm}/{b}" in result["near_best"]]
        shrinks = len(widths) >= 2 and widths[-1] < widths[0] and all(
            widths[i + 1] <= widths[i] for i in range(len(widths) - 1))
        verdict.append(
            f"- norm={norm}: best batch size **{b_star}** ({xu.fmt_acc(bb[b_star])}); best at "
            f"B<=32 {xu.fmt_acc(best_small)} vs B>32 {xu.fmt_acc(best_large)} -> "
            + ("no comparison (one side has no finished run)"
               if not (math.isfinite(best_small) and math.isfinite(best_large)) else
               "small batches **win**" if best_small > best_large + 0.01 else
               "small batches do **not** win clearly (1-point threshold)")
            + f". Number of base lrs that train stably, per batch size {batches}: {widths} "
            f"(near best: {near_counts}) -> the stable range "
            + ("**shrinks** with B (never grows, ends smaller: claim supported)." if shrinks else
               "too few batch sizes to judge." if len(widths) < 2 else
               "does **not** shrink with B.")
        )
    setup = (
        f"Plain SGD (momentum 0), mean-loss learning rate eta = eta~ x B with eta~ in "
        f"{{{', '.join(f'2^{e}' for e in exps)}}}, batch sizes {batches}, norms "
        f"{NORMS[preset]}; weight decay {base.weight_decay}; {base.epochs:g} epochs for every "
        f"batch size, lr /10 at 50% and 75% (schedule=step), no warmup. A run whose loss "
        f"becomes non-finite stops and counts as diverged.\n\n"
        + xu.base_config_table(base, ["model", "width", "dataset", "train_subset",
                                      "test_subset", "epochs", "weight_decay", "schedule"])
    )
    limits_txt = (
        xu.preset_note(preset) + " "
        + (f"Reductions: batch sizes {batches} (not every power of two from 2 to 1024), "
           f"base lrs two octaves apart (not every power of two), {base.train_subset} "
           f"Fashion-MNIST training images for {base.epochs:g} epochs (the paper: CIFAR, 82 "
           f"epochs), an MLP with two hidden layers of 256 units (with BatchNorm, or without "
           f"normalization and with biases) instead of a ResNet, one seed. At B=512 the "
           f"whole run is 48 steps against 12288 at B=2: with the same epochs, small batches "
           f"take many more steps, which by itself favours them in so short a run (the "
           f"paper's 82 epochs let large batches converge too). The stable range is read "
           f"off a grid with steps of 4x."
           if preset == "cpu" else "")
        + "\n\n" + xu.run_time_note(rows, timer) + f" Machine: {xu.environment_note()}."
    )
    write_report(
        out, title="Small batch training (Masters & Luschi 2018)",
        intro=("**Claims.** Best test accuracy at small batches; the stable range of the base "
               "lr eta~ = eta/B shrinks as B grows; with and without BN. Raw rows: "
               "`rows.jsonl`, `runs/results.jsonl`, `runs/<run>/metrics.jsonl`."),
        sections=[Section("Setup", setup), Section("Results", "\n".join(lines), images),
                  Section("Verdict", "\n".join(verdict) or "No finished run."),
                  Section("Limits of the evidence", limits_txt)],
    )
    short = []
    for norm in NORMS[preset]:
        bb = best_acc[norm]
        if not bb:
            continue
        widths = [len(result["stable_range"].get(f"{norm}/{b}", [])) for b in batches]
        short.append(f"norm={norm}: best at batch {max(bb, key=bb.get)} "
                     f"({xu.fmt_acc(max(bb.values()))}), stable base lrs per batch "
                     f"{batches}: {widths} of {len(exps)}")
    result["headline"] = "; ".join(short) + "." if short else "no finished run"
    xu.save_json(result, out / "summary.json")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = xu.experiment_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    run = xu.run_experiment(NAME, args, base_config, lambda preset, _base: points(preset))
    return analyse(args.preset, run.base, run.rows, run.out, run.timer)


if __name__ == "__main__":
    main()
