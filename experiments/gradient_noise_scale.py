"""Experiment 5: the gradient noise scale predicts the critical batch size (McCandlish et al.).

Claim (McCandlish et al. 2018, cited by seed 004): the "simple" noise scale
``B_simple = tr(Sigma) / |G|^2`` measured during training predicts the critical batch
size, beyond which larger batches stop buying proportionally fewer steps (with a fixed
epoch budget: beyond which accuracy drops).

``B_simple`` comes for free from data-parallel training: the trainer logs, for every step
with >= 2 gradient groups (devices or accumulation micro-batches), the mean squared norm of
the group gradients (``B_small`` examples each) and the squared norm of their mean
(``B_big``); :func:`lars_jax.diagnostics.noise_scale_from_metrics` turns them into the
unbiased two-batch estimates and an EMA of numerator and denominator. The measured value is
compared with the critical batch size visible in experiment 1 (if its results exist).

Usage:
  python experiments/gradient_noise_scale.py --preset cpu
  python experiments/gradient_noise_scale.py --preset full
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from lars_jax import experiment_utils as xu  # noqa: E402
from lars_jax.diagnostics import noise_scale_from_metrics  # noqa: E402
from lars_jax.plotting import plot_lines  # noqa: E402
from lars_jax.report import Section, write_report  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "gradient_noise_scale"
EMA = 0.9
FACTOR = 4.0  # "consistent" = within this factor of experiment 1's critical batch size

# (global batch, accumulation micro-batches): B_small = batch / accum
RUNS = {"smoke": [(32, 4)], "cpu": [(128, 4), (1024, 8), (8192, 8)],
        "full": [(512, 8), (4096, 8)]}


def base_config(preset: str) -> TrainConfig:
    # trust_coefficient is unused by SGD; 0.02 is the value of the committed runs
    common = dict(dtype="float32", trust_coefficient=0.02,
                  optimizer="sgd", learning_rate=0.1, base_batch_size=256,
                  lr_scaling="linear", momentum=0.9, weight_decay=5e-4, schedule="cosine",
                  warmup_start="base", checkpoint_every_steps=-1, plot=False, progress=False)
    if preset == "full":
        return TrainConfig(model="resnet20", dataset="cifar10", epochs=30, warmup_epochs=3,
                           eval_every_epochs=5, log_every_steps=1, **common)
    if preset == "smoke":
        return TrainConfig(model="resnet8", width=0.25, dataset="fashion_mnist",
                           train_subset=128, test_subset=128, epochs=1, warmup_epochs=0.0,
                           eval_every_epochs=0, crop_padding=0, flip=False, num_devices=1,
                           log_every_steps=1, **common)
    # same model, data and epochs as experiment 1's cpu preset
    return TrainConfig(model="mlp2", width=1.0, dataset="fashion_mnist", epochs=2,
                       warmup_epochs=0.5, eval_every_epochs=0, crop_padding=0, flip=False,
                       num_devices=1, log_every_steps=1, **common)


def points(preset: str) -> list[dict]:
    return [{"batch_size": b, "grad_accum_steps": k} for b, k in RUNS[preset]]


def analyse(preset: str, base: TrainConfig, rows: list[dict], out: Path,
            timer: xu.Timer | None, exp1_dir: Path | None) -> dict:
    series, stats = {}, {}
    raw = {}
    for r in rows:
        c = xu.config_of(r)
        label = f"B_big={c['batch_size']}, B_small={c['batch_size'] // c['grad_accum_steps']}"
        path = xu.run_dir(r, out / "runs") / "metrics.jsonl"
        if not path.exists():
            continue
        ns = noise_scale_from_metrics(path, ema=EMA)
        if not len(ns["step"]):
            continue
        # epochs for the x axis
        spe = (r.get("summary") or {}).get("steps_per_epoch") or 1
        ep = ns["step"] / spe
        b = ns["b_simple"]
        finite = np.isfinite(b)
        series[label] = (ep[finite].tolist(), b[finite].tolist())
        half = ep >= ep.max() / 2
        second = b[half & finite]
        stats[label] = {
            "median_b_simple_second_half": float(np.median(second)) if second.size else math.nan,
            "final_b_simple": float(b[finite][-1]) if finite.any() else math.nan,
            "steps": int(len(b)),
            "nonpositive_G2_fraction": float(np.mean(ns["grad_sqnorm"] <= 0)),
            "final_accuracy": xu.final_accuracy(r),
        }
        raw[label] = {k: np.asarray(v).tolist() for k, v in ns.items()}
    with open(out / "rows.jsonl", "w") as f:
        for label, d in raw.items():
            f.write(json.dumps({"run": label, **d}) + "\n")

    exp1 = None
    if exp1_dir is not None and (exp1_dir / "summary.json").exists():
        exp1 = json.loads((exp1_dir / "summary.json").read_text())
    b_crit = exp1.get("critical_batch_size") if exp1 else None
    hl = {f"critical batch, exp. 1 ({b_crit})": float(b_crit)} if b_crit else None
    images = []
    if series:
        images.append(plot_lines(series, out / "b_simple.png", xlabel="epoch",
                                 ylabel="B_simple (EMA of numerator / EMA of denominator)",
                                 title=f"Gradient noise scale during training (EMA {EMA})",
                                 logy=True, markers=False, hlines=hl))
    lines = ["| run | median B_simple, 2nd half | final B_simple | steps | single-step "
             "estimates of G^2 <= 0 | final test accuracy |",
             "| :-- | --: | --: | --: | --: | --: |"]
    for k, s in stats.items():
        lines.append(f"| {k} | {s['median_b_simple_second_half']:.0f} | "
                     f"{s['final_b_simple']:.0f} | {s['steps']} | "
                     f"{100 * s['nonpositive_G2_fraction']:.0f}% | "
                     f"{xu.fmt_acc(s['final_accuracy'])} |")
    table = "\n".join(lines) + "\n"
    verdict = []
    meds = [s["median_b_simple_second_half"] for s in stats.values()
            if math.isfinite(s["median_b_simple_second_half"])]
    if meds:
        bs = float(np.median(meds))
        verdict.append(f"- Measured B_simple (median over runs of the second-half median): "
                       f"**{bs:.0f}** examples.")
        if b_crit and exp1.get("critical_batch_is_grid_minimum"):
            ok = bs <= FACTOR * b_crit
            verdict.append(
                f"- Experiment 1's critical batch size is at most **{b_crit}** (its smallest "
                f"batch already gave the best accuracy, within {exp1.get('flat_tolerance_pp')} "
                f"points). B_simple = {bs:.0f} is "
                + (f"**consistent** with that (at most {FACTOR:g} x {b_crit})." if ok else
                   f"**not consistent** with that (more than {FACTOR:g} x {b_crit}).")
            )
        elif b_crit:
            ratio = bs / b_crit
            grid = exp1.get("best_per_batch", {})
            verdict.append(
                f"- Experiment 1's critical batch size (largest batch within "
                f"{exp1.get('flat_tolerance_pp')} points of the best accuracy, batch grid "
                f"{sorted(int(k) for k in grid)}): **{b_crit}**. Ratio B_simple / B_crit = "
                f"{ratio:.2f} -> "
                + (f"**consistent** (within a factor {FACTOR:g}, the resolution of the coarse "
                   f"batch grid)." if 1 / FACTOR <= ratio <= FACTOR else
                   f"**not consistent** (off by more than a factor {FACTOR:g}).")
            )
        else:
            verdict.append("- Experiment 1 has no committed critical batch size to compare "
                           "with; run experiments/linear_scaling_warmup.py first.")
    setup = (
        f"SGD+momentum, lr {base.learning_rate} at batch {base.base_batch_size} scaled "
        f"linearly, {base.epochs:g} epochs, same model and data as experiment 1's preset. "
        f"Runs (global batch, accumulation micro-batches): {RUNS[preset]}; B_small = one "
        f"micro-batch, B_big = the global batch. Estimators (McCandlish et al. app. A): "
        f"|G|^2 ~ (B_big|G_big|^2 - B_small|G_small|^2)/(B_big - B_small), tr(Sigma) ~ "
        f"(|G_small|^2 - |G_big|^2)/(1/B_small - 1/B_big), |G_small|^2 averaged over the "
        f"micro-batches of a step; EMA decay {EMA} applied to numerator and denominator "
        f"separately (bias cancels in the ratio).\n\n"
        + xu.base_config_table(base, ["model", "width", "dataset", "train_subset", "epochs",
                                      "momentum", "weight_decay"])
    )
    limits_txt = (
        xu.preset_note(preset) + " "
        + ("B_simple is measured on a short run of a tiny model; it grows as the loss falls, "
           "so its value depends on when it is read (the plot shows the whole run). "
           "B_simple is only a proxy for McCandlish's B_noise (equal when the Hessian is "
           "isotropic). Experiment 1's critical batch size is read off a coarse grid (steps of "
           "4x to 8x) and depends on its 2-point tolerance; agreement within a factor "
           f"{FACTOR:g} is all this comparison can show."
           if preset == "cpu" else "")
        + "\n\n" + xu.run_time_note(rows, timer) + f" Machine: {xu.environment_note()}."
    )
    write_report(
        out, title="Gradient noise scale vs critical batch size (McCandlish et al.)",
        intro=("**Claim.** The gradient noise scale B_simple = tr(Sigma)/|G|^2, measured "
               "during training with the two-batch estimator, predicts the critical batch "
               "size. Raw rows: `rows.jsonl` (per run: the per-step estimates and the EMA "
               "series), `runs/<run>/metrics.jsonl` (the logged squared norms)."),
        sections=[Section("Setup", setup), Section("Results", table, images),
                  Section("Verdict", "\n".join(verdict) or "No finished run."),
                  Section("Limits of the evidence", limits_txt)],
    )
    headline = "no finished run"
    if meds:
        upper = "<= " if exp1 and exp1.get("critical_batch_is_grid_minimum") else ""
        headline = (f"B_simple ~ {float(np.median(meds)):.0f} (rising during training) vs "
                    f"critical batch {upper}{b_crit} from experiment 1: "
                    + ("consistent" if any("**consistent**" in v for v in verdict) else
                       "not consistent" if any("**not consistent**" in v for v in verdict) else
                       "no comparison")
                    + f" within a factor {FACTOR:g}.")
    result = {"headline": headline,
              "stats": stats, "critical_batch_size_exp1": b_crit, "preset": preset}
    xu.save_json(result, out / "summary.json")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = xu.experiment_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--exp1", default=None,
                   help="Results folder of experiment 1 (default: the same preset's).")
    args = p.parse_args(argv)
    exp1 = Path(args.exp1) if args.exp1 else xu.default_out("linear_scaling_warmup",
                                                            args.preset)
    run = xu.run_experiment(NAME, args, base_config, lambda preset, _base: points(preset))
    return analyse(args.preset, run.base, run.rows, run.out, run.timer, exp1)


if __name__ == "__main__":
    main()
