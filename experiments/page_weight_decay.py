"""Experiment 3: weight decay, weight-norm equilibrium and LARS (Page, seed 001).

Claims (Page, "How to train your ResNet 6"; formulas in lars_jax.diagnostics), for conv
layers followed by BatchNorm (scale invariant, so ``w . g = 0``):

(a) per layer, the per-step shrink of ``|w|^2`` from weight decay and its growth from the
    gradient step balance after a relaxation time of about ``(1-rho)/(2*lr*wd)`` steps;
(b) ``lr*|g|/|w|`` tracks ``sqrt(2*lr*wd)`` without momentum and
    ``sqrt(2*lr*wd*(1-rho))`` with momentum (SGD behaves like LARS);
(c) if the batch grows n-fold and gradients are noise dominated (``|g| ~ 1/sqrt(n)``),
    the matching learning-rate rule is ``lr ~ sqrt(n)``, not ``n``;
(d) ``g_t`` and the momentum buffer ``v_{t-1}`` are nearly uncorrelated.

Runs (all with ``log_diagnostics``): SGD+momentum at batch B (the reference), plain SGD at
batch B with the same effective rate ``lr/(1-rho)``, and SGD+momentum at batch n*B with the
learning rate scaled by sqrt(n) and by n.

Usage:
  python experiments/page_weight_decay.py --preset cpu
  python experiments/page_weight_decay.py --preset full
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from lars_jax import experiment_utils as xu  # noqa: E402
from lars_jax.diagnostics import page_lars_rate  # noqa: E402
from lars_jax.plotting import plot_lines  # noqa: E402
from lars_jax.report import Section, write_report  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "page_weight_decay"
BALANCE_TOL = 0.25  # |shrink/growth - 1| below this counts as balanced
N_SCALE = 4  # batch multiplier for the sqrt(n) check
WINDOW_RELAX = 2.0  # statistics start after this many relaxation times (at peak lr)

SETTINGS = {  # batch B, lr (momentum run), wd, rho
    "smoke": dict(batch=32, lr=0.1, wd=1e-2, rho=0.9),
    "cpu": dict(batch=64, lr=0.1, wd=1e-2, rho=0.9),
    "full": dict(batch=512, lr=0.4, wd=5e-4, rho=0.9),
}


def base_config(preset: str) -> TrainConfig:
    s = SETTINGS[preset]
    common = dict(dtype="float32", trust_coefficient=0.001,
                  optimizer="sgd", lr_scaling="none", base_batch_size=s["batch"],
                  weight_decay=s["wd"], schedule="linear", warmup_start="zero",
                  checkpoint_every_steps=-1, plot=False, progress=False, log_diagnostics=True,
                  nesterov=False)
    if preset == "full":  # Page's setting: ResNet-9, 24 epochs, 5 of warmup
        return TrainConfig(model="resnet9", dataset="cifar10", epochs=24, warmup_epochs=5,
                           eval_every_epochs=1, log_every_steps=5, **common)
    if preset == "smoke":
        return TrainConfig(model="resnet8", width=0.25, dataset="fashion_mnist",
                           train_subset=128, test_subset=128, epochs=2, warmup_epochs=0.5,
                           eval_every_epochs=1, crop_padding=0, flip=False, num_devices=1,
                           log_every_steps=1, **common)
    # conv layers followed by BN, as in Page's analysis: the small ResNet-8 (slow on CPU,
    # so 16384 images; 1024 steps at batch 64, ~20 relaxation times)
    return TrainConfig(model="resnet8", width=0.25, dataset="fashion_mnist",
                       train_subset=16384, test_subset=2000, epochs=4, warmup_epochs=0.5,
                       eval_every_epochs=0.5, crop_padding=0, flip=False, num_devices=1,
                       log_every_steps=4, **common)


def runs(preset: str) -> dict[str, dict]:
    s = SETTINGS[preset]
    b, lr, rho = s["batch"], s["lr"], s["rho"]
    return {
        "momentum": dict(batch_size=b, learning_rate=lr, momentum=rho),
        "plain": dict(batch_size=b, learning_rate=lr / (1 - rho), momentum=0.0),
        "sqrt_n": dict(batch_size=N_SCALE * b, learning_rate=lr * math.sqrt(N_SCALE),
                       momentum=rho),
        "linear_n": dict(batch_size=N_SCALE * b, learning_rate=lr * N_SCALE, momentum=rho),
    }


_CMAP = __import__("matplotlib").colormaps["tab10"]


def _is_conv(layer: str) -> bool:
    low = layer.lower()
    return "conv" in low and "dense" not in low


def _norm_series(metrics: list[dict], q: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return xu.layer_series([m for m in metrics if m.get("kind") == "train"], q)


def _short(layer: str) -> str:
    return layer.replace("diag/", "").replace("/kernel", "").replace("BasicBlock_", "B")


def analyse(preset: str, base: TrainConfig, rows: list[dict], out: Path,
            timer: xu.Timer | None) -> dict:
    s = SETTINGS[preset]
    spec = runs(preset)
    by_name: dict[str, dict] = {}
    for r in rows:
        c = xu.config_of(r)
        for name, o in spec.items():
            if all(xu._same(c.get(k), v) for k, v in o.items()):
                by_name[name] = r
    metrics = {k: xu.read_metrics(r, out / "runs") for k, r in by_name.items()}
    images: dict[str, list[Path]] = {}
    result: dict = {"preset": preset}

    colors: dict[str, Any] = {}

    def color(layer: str) -> Any:
        if layer not in colors:
            colors[layer] = _CMAP(len(colors) % 10)
        return colors[layer]

    def per_layer_plot(name: str, q: str, fname: str, ylabel: str, title: str,
                       normalise: dict | None = None, logy: bool = False) -> Path | None:
        series = _norm_series(metrics.get(name, []), q)
        if not series:
            return None
        lines = []
        for layer, (xs, ys) in series.items():
            if normalise is not None:
                ys = ys / normalise[layer]
            lines.append({"x": xs, "y": ys, "label": _short(layer), "color": color(layer)})
        return xu.plot_styled(out / fname, lines, xlabel="step", ylabel=ylabel, title=title,
                              logy=logy, legend_cols=2)

    ref = "momentum"
    rm = metrics.get(ref, [])
    w2 = _norm_series(rm, "w_sqnorm")
    init = {k: v[1][0] for k, v in w2.items() if len(v[1])}
    imgs = []
    for q, fname, label in (("wd_shrink", "wd_shrink.png", "shrink of |w|^2 per step"),
                            ("grad_growth", "grad_growth.png", "growth of |w|^2 per step")):
        p = per_layer_plot(ref, q, fname, f"{label} / initial |w|^2",
                           f"{label} (SGD+momentum, lifetime form)", init, logy=True)
        if p:
            imgs.append(p)
    # overlay, conv layers: shrink solid vs growth dashed, one colour per layer
    shr, gro = _norm_series(rm, "wd_shrink"), _norm_series(rm, "grad_growth")
    if shr:
        lines = []
        for layer in [k for k in shr if _is_conv(k)][:4]:
            lines.append({"x": shr[layer][0], "y": shr[layer][1] / init[layer],
                          "label": f"{_short(layer)} shrink (wd)", "color": color(layer),
                          "lw": 2.0})
            lines.append({"x": gro[layer][0], "y": gro[layer][1] / init[layer],
                          "label": f"{_short(layer)} growth (gradient)", "color": color(layer),
                          "ls": "--", "lw": 1.0})
        imgs.append(xu.plot_styled(
            out / "shrink_vs_growth.png", lines, xlabel="step",
            ylabel="change of |w|^2 per step / initial |w|^2",
            title="Weight-decay shrink (solid) vs gradient growth (dashed)", logy=True,
            legend_cols=2))
    p = per_layer_plot(ref, "w_sqnorm", "w_sqnorm.png", "|w|^2 / initial |w|^2",
                       "Squared weight norm over training (initial = 1)", init)
    if p:
        imgs.append(p)
    images["norms"] = imgs

    # balance statistic per layer: ratio of mean shrink to mean growth after burn-in
    relax = (1 - s["rho"]) / (2 * s["lr"] * s["wd"])
    balance = {}
    for layer in shr:
        xs = shr[layer][0]
        total = xs.max() if len(xs) else 0
        # after relaxation, before the lr decays to 0
        sel = (xs > WINDOW_RELAX * relax) & (xs < 0.8 * total)
        if sel.sum() >= 3:
            balance[_short(layer)] = float(shr[layer][1][sel].mean() / gro[layer][1][sel].mean())
    result["shrink_over_growth"] = balance
    result["relaxation_steps"] = relax

    # lr|g|/|w| vs Page's prediction, momentum and plain runs
    ratio_imgs = []
    ratio_stats = {}
    for name, pred_fn, title in (
        ("plain", lambda lr: page_lars_rate(lr, s["wd"]), "plain SGD: lr|g|/|w| vs sqrt(2 lr wd)"),
        ("momentum", lambda lr: page_lars_rate(lr, s["wd"], s["rho"]) * (1 - s["rho"]),
         "SGD+momentum: lr|g|/|w| vs sqrt(2 lr wd (1-rho))"),
    ):
        m = metrics.get(name, [])
        ser = _norm_series(m, "lr_g_over_w")
        lr_x, lr_y = xu.curve([r for r in m if r.get("kind") == "train"], "lr", x="step")
        if not ser or not len(lr_x):
            continue
        pred = np.asarray([pred_fn(max(float(v), 0.0)) for v in lr_y])
        lines = [{"x": v[0], "y": v[1], "label": _short(k), "color": color(k), "ls": "none",
                  "marker": ".", "ms": 4, "alpha": 0.7} for k, v in ser.items() if _is_conv(k)]
        lines.append({"x": lr_x, "y": pred, "label": "prediction", "color": "black", "lw": 2.2})
        ratio_imgs.append(xu.plot_styled(out / f"lr_g_over_w_{name}.png", lines, xlabel="step",
                                         ylabel="lr |g| / |w|", title=title, logy=True,
                                         legend_cols=2))
        # median ratio measured/predicted over the middle of training, conv layers
        rs = []
        for k, (xs, ys) in ser.items():
            if not _is_conv(k):
                continue
            predk = np.interp(xs, lr_x, pred)
            sel = (xs > WINDOW_RELAX * relax) & (xs < 0.8 * xs.max()) & (predk > 0)
            if sel.sum():
                rs.append(float(np.median(ys[sel] / predk[sel])))
        if rs:
            ratio_stats[name] = {"median_over_layers": float(np.median(rs)),
                                 "min": float(min(rs)), "max": float(max(rs))}
    images["ratio"] = ratio_imgs
    result["measured_over_predicted"] = ratio_stats

    # cos(g_t, v_{t-1})
    cos = _norm_series(rm, "cos_g_v")
    cos_stats = {}
    if cos:
        lines = [{"x": v[0], "y": v[1], "label": _short(k), "color": color(k), "lw": 1.0}
                 for k, v in cos.items()]
        images["cos"] = [xu.plot_styled(
            out / "cos_g_v.png", lines, xlabel="step", ylabel="cos(g_t, v_{t-1})",
            title="Correlation of the gradient with the momentum buffer", hlines={"0": 0.0},
            legend_cols=2)]
        for k, (xs, ys) in cos.items():
            sel = xs > WINDOW_RELAX * relax
            if sel.sum():
                cos_stats[_short(k)] = float(np.median(ys[sel]))
    result["median_cos_g_v"] = cos_stats

    # sqrt(n) batch scaling. For a scale-invariant layer |g| ~ 1/|w|, and the two runs reach
    # different |w|; the scale-free gradient norm |g|*|w| is compared instead.
    def scale_free(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        g2 = _norm_series(metrics.get(name, []), "g_sqnorm")
        w2_ = _norm_series(metrics.get(name, []), "w_sqnorm")
        return {k: (g2[k][0], np.sqrt(g2[k][1] * w2_[k][1])) for k in g2 if k in w2_}

    gb = {n: scale_free(n) for n in ("momentum", "sqrt_n")}
    gratio = {}
    for k in gb["momentum"]:
        if k not in gb["sqrt_n"] or not _is_conv(k):
            continue
        xa, ya = gb["momentum"][k]
        xb, yb = gb["sqrt_n"][k]
        ya_at = np.interp(xb * N_SCALE, xa, ya)  # equal epochs: big-run step * N_SCALE
        sel = (xb * N_SCALE > WINDOW_RELAX * relax) & (xb < 0.8 * xb.max())
        if sel.sum():
            gratio[_short(k)] = float(np.median(yb[sel] / ya_at[sel]))
    result["grad_norm_ratio_nB_over_B"] = gratio
    curves = {}
    finals = {}
    jumps: list[float] = []
    for name, label in (("momentum", f"B={s['batch']}, lr={s['lr']:g}"),
                        ("sqrt_n", f"B={N_SCALE * s['batch']}, lr x sqrt({N_SCALE})"),
                        ("linear_n", f"B={N_SCALE * s['batch']}, lr x {N_SCALE}"),
                        ("plain", f"B={s['batch']}, no momentum, lr={s['lr'] / (1 - s['rho']):g}")):
        m = metrics.get(name, [])
        xs, ys = xu.curve([r for r in m if r.get("kind") == "eval"], "test_accuracy")
        if len(xs):
            curves[label] = (xs.tolist(), ys.tolist())
            if len(ys) > 1:
                jumps.append(float(np.max(np.abs(np.diff(ys)))))
        if name in by_name:
            finals[name] = xu.final_accuracy(by_name[name])
    if curves:
        images["scaling"] = [plot_lines(curves, out / "batch_scaling_curves.png",
                                        xlabel="epoch", ylabel="test accuracy",
                                        title=f"sqrt(n) vs linear lr scaling, n={N_SCALE}")]
    result["final_accuracy"] = finals

    # ---- report text
    table_bal = "| layer | mean shrink / mean growth |\n| :-- | --: |\n" + "".join(
        f"| {k} | {v:.2f} |\n" for k, v in balance.items())
    conv_bal = [v for k, v in balance.items() if "dense" not in k.lower()]
    n_bal = sum(abs(v - 1) < BALANCE_TOL for v in conv_bal)
    verdict = []
    if conv_bal:
        verdict.append(
            f"- (a) Balance: after {WINDOW_RELAX * relax:.0f} steps ({WINDOW_RELAX:g} relaxation "
            f"times) and before the lr "
            f"decays to 0, {n_bal} of {len(conv_bal)} conv layers have mean shrink / mean "
            f"growth within {BALANCE_TOL:.0%} of 1 (median "
            f"{float(np.median(conv_bal)):.2f}): "
            + ("**supported**." if n_bal >= 0.75 * len(conv_bal) else "**not clearly**.")
        )
        med_bal = float(np.median(conv_bal))
        if med_bal > 1 + BALANCE_TOL:
            verdict.append(
                "  Shrink exceeds growth: the weights are still above their equilibrium norm "
                "and shrinking (see the |w|^2 plot), i.e. the relaxation is not complete in "
                "this short run, in which the lr also decays before |w| can settle; a larger "
                "|w| than at equilibrium also lowers lr|g|/|w| below the prediction in (b).")
        elif med_bal < 1 - BALANCE_TOL:
            verdict.append(
                "  Growth exceeds shrink: the weights are still below their equilibrium norm "
                "and growing.")
    for name, st in ratio_stats.items():
        ok = 0.67 <= st["median_over_layers"] <= 1.5
        verdict.append(
            f"- (b) {name} run: measured lr|g|/|w| / predicted = {st['median_over_layers']:.2f} "
            f"(median over conv layers; layers range {st['min']:.2f} .. {st['max']:.2f}): "
            + ("**tracks the formula** (within a factor 1.5)." if ok else
               "**does not track** the formula within a factor 1.5.")
        )
    if gratio:
        med = float(np.median(list(gratio.values())))
        pred = 1 / math.sqrt(N_SCALE)
        closer = "1/sqrt(n)" if abs(med - pred) < abs(med - 1.0) else "1 (signal dominated)"
        verdict.append(
            f"- (c) Scale-free gradient norm |g||w| at batch {N_SCALE}x vs 1x at equal epochs: "
            f"ratio {med:.2f} (median over "
            f"conv layers; 1/sqrt(n) = {pred:.2f}): closer to {closer}."
        )
    if {"momentum", "sqrt_n", "linear_n"} <= set(finals):
        fm, fs, fl = finals["momentum"], finals["sqrt_n"], finals["linear_n"]
        if all(math.isfinite(v) for v in (fm, fs, fl)):
            better = "sqrt" if abs(fs - fm) < abs(fl - fm) else "linear"
            verdict.append(
                f"- (c) Final accuracy: B: {xu.fmt_acc(fm)}, {N_SCALE}B with lr x sqrt(n): "
                f"{xu.fmt_acc(fs)}, with lr x n: {xu.fmt_acc(fl)} -> the **{better}** rule "
                f"lands closer to the small-batch run."
                + (f" Weak evidence: test accuracy jumps by up to {100 * max(jumps):.0f} "
                   f"points between consecutive evaluations of one run, more than the "
                   f"differences compared here." if jumps and max(jumps) > abs(fs - fl) else "")
            )
        else:
            verdict.append(f"- (c) Final accuracy: B {xu.fmt_acc(fm)}, sqrt {xu.fmt_acc(fs)}, "
                           f"linear {xu.fmt_acc(fl)}.")
    if cos_stats:
        conv_cos = [v for k, v in cos_stats.items() if "dense" not in k.lower()]
        med = float(np.median(conv_cos)) if conv_cos else math.nan
        verdict.append(
            f"- (d) Median cos(g_t, v_(t-1)) after relaxation, conv layers: {med:.2f} "
            + ("(**near 0**, |cos| < 0.2)." if abs(med) < 0.2 else "(**not near 0**).")
        )

    setup = (
        f"SGD with coupled weight decay wd={s['wd']}, batch B={s['batch']}, peak lr "
        f"{s['lr']} with momentum rho={s['rho']} (heavy ball), linear warmup over "
        f"{base.warmup_epochs:g} epochs then linear decay to 0 over {base.epochs:g} epochs "
        f"(Page's schedule shape). Relaxation time (1-rho)/(2 lr wd) = {relax:.0f} steps. "
        f"Runs: " + "; ".join(f"{k}: batch {v['batch_size']}, lr {v['learning_rate']:.4g}, "
                              f"momentum {v['momentum']}" for k, v in spec.items())
        + f". Diagnostics are logged "
        f"every {base.log_every_steps} steps (means over the window) by "
        f"`lars_jax.diagnostics.layer_diagnostics`, before each update: shrink = "
        f"lr_e*wd*(2-lr_e*wd)*|w|^2 and growth = lr_e^2*|g|^2 with lr_e = lr/(1-rho) "
        f"(Page's lifetime form; exact for rho=0).\n\n"
        + xu.base_config_table(base, ["model", "width", "norm", "dataset", "train_subset",
                                      "epochs", "schedule", "weight_decay"])
    )
    limits_txt = (
        xu.preset_note(preset) + " "
        + (f"Reductions: a ResNet-8 of width 0.25 on {base.train_subset} Fashion-MNIST "
           f"images for "
           f"{base.epochs:g} epochs instead of ResNet-9 on CIFAR-10 for 24; wd raised to "
           f"{s['wd']} so that the relaxation time fits in the short run; one seed. The "
           f"balance and ratio statistics use the window between {WINDOW_RELAX:g} relaxation "
           f"times (at peak lr) and 80% "
           f"of training. The final Dense layer is not scale invariant; it is plotted but "
           f"left out of the conv-layer statistics."
           if preset == "cpu" else "")
        + "\n\n" + xu.run_time_note(rows, timer) + f" Machine: {xu.environment_note()}."
    )
    acc_lines = "\n".join(f"- {k}: {xu.fmt_acc(v)}" for k, v in finals.items())
    write_report(
        out, title="Weight decay, weight-norm equilibrium and LARS (Page)",
        intro=("**Claims** (a)-(d) of Page's weight-decay analysis (How to train your "
               "ResNet, part 6) for BN-followed conv layers. Raw "
               "rows: `runs/results.jsonl` and `runs/<run>/metrics.jsonl` (per-step `diag/*` "
               "keys); derived numbers in `summary.json`."),
        sections=[
            Section("Setup", setup),
            Section("(a) Shrink vs growth of |w|^2, and |w|^2 over training", table_bal,
                    images.get("norms", [])),
            Section("(b) lr|g|/|w| against Page's formula",
                    "| run | measured / predicted, median over conv layers | layer range |\n"
                    "| :-- | --: | :-- |\n" + "".join(
                        f"| {k} | {v['median_over_layers']:.2f} | {v['min']:.2f} .. "
                        f"{v['max']:.2f} |\n" for k, v in ratio_stats.items()),
                    images.get("ratio", [])),
            Section("(c) sqrt(n) batch scaling",
                    f"Per-layer ratio of the scale-free gradient norm |g||w| (batch "
                    f"{N_SCALE}B / B, equal epochs; 1/sqrt(n) = {1 / math.sqrt(N_SCALE):.2f} if "
                    f"noise dominated, 1 if signal dominated): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in gratio.items())
                    + f"\n\nFinal test accuracy:\n\n{acc_lines}", images.get("scaling", [])),
            Section("(d) Correlation of g_t with the momentum buffer",
                    ", ".join(f"{k}: {v:.2f}" for k, v in cos_stats.items()),
                    images.get("cos", [])),
            Section("Verdict", "\n".join(verdict) or "Not enough steps after the relaxation time "
                    "in the finished runs to compute the statistics."),
            Section("Limits of the evidence", limits_txt),
        ],
    )
    short = []
    if conv_bal:
        short.append(f"(a) shrink/growth of |w|^2 = {float(np.median(conv_bal)):.2f} (median conv "
                     f"layer): " + ("balanced" if n_bal >= 0.75 * len(conv_bal) else
                                    "not balanced in this short run"))
    for name, st in ratio_stats.items():
        short.append(f"(b) {name}: lr|g|/|w| = {st['median_over_layers']:.2f} x prediction")
    if gratio:
        gmed = float(np.median(list(gratio.values())))
        short.append(f"(c) scale-free |g| ratio at {N_SCALE}x batch {gmed:.2f} "
                     f"(noise-dominated would be {1 / math.sqrt(N_SCALE):.2f})")
    if cos_stats:
        cmed = float(np.median(list(cos_stats.values())))
        short.append(f"(d) median cos(g_t, v_t-1) = {cmed:.2f}")
    result["headline"] = "; ".join(short) + "." if short else "no statistics"
    xu.save_json(result, out / "summary.json")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = xu.experiment_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)

    def points(preset: str, _base: object) -> list:
        pts = list(runs(preset).values())
        return pts[:1] if preset == "smoke" else pts

    run = xu.run_experiment(NAME, args, base_config, points)
    return analyse(args.preset, run.base, run.rows, run.out, run.timer)


if __name__ == "__main__":
    main()
