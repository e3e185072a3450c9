"""``lars-jax advise``: measure the gradient noise scale of a config in minutes and advise a
batch size, learning rates and a warmup.

`advise` builds the user's run exactly as ``lars-jax train`` would (`lars_jax.train.build`,
same model, data, optimizer and schedule) with the step also returning, from every
example's gradient norm in the same backward pass, the one-batch estimates of ``tr(Sigma)``
and ``|G|^2`` (`lars_jax.diagnostics.noise_scale_from_norms`). It runs the first steps of
that run (``--steps``, bounded by ``--max-seconds``), averages the estimates with an EMA of
numerator and denominator apart (`lars_jax.diagnostics.noise_scale_average`) and writes
``advice.json`` and ``b_simple.png`` to the workdir:

* ``B_simple = tr(Sigma)/|G|^2`` with its interval, and its trend: B_simple grows as the
  loss falls, so an early measurement is a lower bound on the value later in training;
* the predicted critical batch ``B_crit = ratio * B_simple``, with ``ratio = B_crit /
  B_simple`` as experiment 5 (``experiments/gradient_noise_scale.py``) measured it on one
  task (Fashion-MNIST, mlp2): the packaged ``calibration.json``, generated from that
  experiment's committed summary by :func:`write_calibration` (never edited by hand)::

      python -m lars_jax.runs.advise experiments/results/gradient_noise_scale/summary.json

* a batch range around ``B_crit`` (McCandlish et al.: ``S = S_min (1 + B_crit/B)`` steps
  and ``E = E_min (1 + B/B_crit)`` examples), the learning rate at each batch by the linear
  and the square-root rule from the config's ``learning_rate`` at ``base_batch_size``, and
  a warmup length (Goyal et al.: gradual warmup over about 5% of the run).

References:
  McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training",
  arXiv:1812.06162, 2018.
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
  arXiv:1706.02677, 2017.
  Krizhevsky, "One weird trick for parallelizing convolutional neural networks",
  arXiv:1404.5997, 2014 (the square-root rule).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
SUMMARY_FILE = "experiments/results/gradient_noise_scale/summary.json"
ADVICE_FILE = "advice.json"
PLOT_FILE = "b_simple.png"
WARMUP_FRACTION = 0.05  # Goyal et al.: 5 of 90 epochs; experiment 1: 5% of the budget
DEFAULT_STEPS = 300
DEFAULT_MAX_SECONDS = 180.0
WINDOWS = 5
ESTIMATORS = ("per_example", "two_batch")


# ----------------------------------------------------------------------------- calibration


def calibration_from_summary(summary: Mapping[str, Any], source: str = SUMMARY_FILE
                             ) -> dict[str, Any]:
    """The calibration ``B_crit / B_simple`` from experiment 5's ``summary.json``.

    Experiment 5 (``experiments/gradient_noise_scale.py``, pre-registered, v3) fixes which
    ratio a tool may read: its ``calibration`` key names the hardest target error whose
    B_crit lies inside the measured batches, with the ratio's 95% two-stage bootstrap
    interval (over seeds and batches). That ratio is taken as it is; the per-target ratios
    of ``fits`` are kept beside it for the record.

    Args:
      summary: the parsed summary (``calibration``, ``fits``, ``verdict``, ``criterion_sha``).
      source: where it was read, recorded in the result.

    Returns:
      A JSON-serialisable dict: ``ratio``, ``ratio_lo``, ``ratio_hi``, ``target_error``,
      ``targets`` (every fitted target), ``verdict``, ``criterion_sha``, ``source``, and the
      ``sha256`` of the canonical summary.

    Raises:
      ValueError: a summary without a usable calibration.
    """
    cal = summary.get("calibration") or {}
    if not cal.get("usable"):
        raise ValueError(f"{source}: no usable calibration "
                         f"({cal.get('why', 'no calibration key')})")
    fits = summary.get("fits") or {}
    targets = [{"target_error": float(k), "status": f.get("status"), "ratio": f.get("ratio"),
                "ratio_lo": f.get("ratio_lo"), "ratio_hi": f.get("ratio_hi"),
                "b_crit": f.get("b_crit")} for k, f in sorted(fits.items(), key=lambda kv:
                                                               float(kv[0]))]
    canonical = json.dumps(summary, sort_keys=True, separators=(",", ":")).encode()
    return {
        "ratio": float(cal["b_crit_over_b_simple"]),
        "ratio_lo": float(cal["lo"]),
        "ratio_hi": float(cal["hi"]),
        "target_error": float(cal["target_error"]),
        "status": cal.get("status"),
        "targets": targets,
        "verdict": summary.get("verdict"),
        "criterion_sha": summary.get("criterion_sha"),
        "task": "Fashion-MNIST, mlp2 with ghost BatchNorm over 32, SGD with momentum at a "
                "constant lr tuned per batch on a separate seed, steps to the target test "
                "error for batches 128-8192; B_simple by the two-batch estimator (B_small 32, "
                "B_big 128, EMA 0.95) when the B=128 runs reach the target",
        "source": source,
        "sha256": hashlib.sha256(canonical).hexdigest(),
        "generated_by": "python -m lars_jax.runs.advise " + source,
    }


def write_calibration(summary_path: str = SUMMARY_FILE, out: Path = CALIBRATION_FILE
                      ) -> dict[str, Any]:
    """Regenerates the packaged ``calibration.json`` from experiment 5's summary."""
    with open(summary_path) as f:
        calib = calibration_from_summary(json.load(f), source=SUMMARY_FILE)
    Path(out).write_text(json.dumps(calib, indent=1, sort_keys=True) + "\n")
    return calib


def load_calibration() -> dict[str, Any]:
    """The packaged calibration (see :func:`write_calibration`)."""
    return json.loads(CALIBRATION_FILE.read_text())


# ----------------------------------------------------------------------------- advice


def _check_options(steps: int, max_seconds: float, ema: float) -> None:
    """One-line errors naming the option, before any compute."""
    if not isinstance(steps, int) or steps < 10:
        raise ValueError(f"advise --steps={steps}: must be an integer >= 10 (the EMA needs "
                         "steps to average)")
    if not max_seconds > 0:
        raise ValueError(f"advise --max-seconds={max_seconds}: must be > 0")
    if not 0.0 < ema < 1.0:
        raise ValueError(f"advise --ema={ema}: must be in (0, 1)")


def _windows(trace: np.ndarray, g2: np.ndarray, steps: np.ndarray) -> list[dict[str, float]]:
    """B_simple of consecutive windows of steps (ratio of window means, delta-method se)."""
    out = []
    for idx in np.array_split(np.arange(len(trace)), min(WINDOWS, len(trace) // 4 or 1)):
        t, g = trace[idx], g2[idx]
        mt, mg = float(t.mean()), float(g.mean())
        n = len(idx)
        b = mt / mg if mg > 0 else math.inf
        if mg > 0 and n > 1:
            c = np.cov(t, g)
            rel = c[0, 0] / mt**2 + c[1, 1] / mg**2 - 2 * c[0, 1] / (mt * mg)
            se = abs(b) * math.sqrt(max(rel, 0.0) / n)
        else:
            se = math.inf
        out.append({"step_first": int(steps[idx[0]]), "step_last": int(steps[idx[-1]]),
                    "b_simple": b, "se": se})
    return out


def batch_advice(b_crit: float, config: Any, num_train: int) -> list[dict[str, Any]]:
    """Powers of two from ``B_crit/8`` to ``4 B_crit`` (capped at the data set): the steps
    and examples relative to the minimum (``1 + B_crit/B``, ``1 + B/B_crit``), the lr by
    the linear and square-root rules and the warmup (5% of the run, none at or below the
    base batch)."""
    from lars_jax import schedules

    lo = max(1, 2 ** math.floor(math.log2(max(b_crit / 8, 1))))
    rows = []
    b = lo
    while b <= min(4 * b_crit, num_train):
        steps_run = math.ceil(config.epochs * num_train / b)
        warm = 0 if b <= config.base_batch_size else math.ceil(WARMUP_FRACTION * steps_run)
        rows.append({
            "batch_size": b, "steps_over_min": 1 + b_crit / b, "examples_over_min": 1 + b / b_crit,
            "lr_linear": schedules.linear_scaling(config.learning_rate, b, config.base_batch_size),
            "lr_sqrt": schedules.sqrt_scaling(config.learning_rate, b, config.base_batch_size),
            "warmup_steps": warm, "warmup_epochs": round(warm * b / num_train, 4),
            "recommended": b_crit / 2 <= b <= b_crit * 1.0001,
        })
        b *= 2
    if rows and not any(r["recommended"] for r in rows):  # no power of two in [Bc/2, Bc]
        best = min(rows, key=lambda r: abs(math.log(r["batch_size"] / (b_crit / math.sqrt(2)))))
        best["recommended"] = True
    return rows


def _advice(series: dict[str, np.ndarray], config: Any, num_train: int, ema: float
            ) -> dict[str, Any]:
    """advice.json's content from the measured series."""
    from lars_jax.diagnostics import noise_scale_average

    avg = {k: np.asarray(v) for k, v in noise_scale_average(
        series["trace_sigma"], series["grad_sq_norm"], decay=ema)._asdict().items()}
    b, lo, hi = (float(avg[k][-1]) for k in ("b_simple", "b_simple_lo", "b_simple_hi"))
    windows = _windows(series["trace_sigma"], series["grad_sq_norm"], series["step"])
    cal = load_calibration()
    b_crit = cal["ratio"] * b
    advice: dict[str, Any] = {
        "b_simple": b, "b_simple_lo": lo, "b_simple_hi": hi,
        "b_simple_se": float(avg["b_simple_se"][-1]), "ema": ema,
        "effective_steps": float(avg["effective_count"][-1]),
        "trace_sigma": float(avg["trace_sigma"][-1]),
        "grad_sq_norm": float(avg["grad_sq_norm"][-1]),
        "steps_measured": int(len(series["step"])),
        "trend": {"windows": windows,
                  "growth": windows[-1]["b_simple"] / windows[0]["b_simple"]
                  if windows[0]["b_simple"] > 0 else math.nan,
                  "note": "B_simple grows as training proceeds (the gradient shrinks faster "
                          "than its noise): this early value underestimates the noise scale "
                          "later in the run, so the critical batch grows too."},
        "calibration": {k: cal[k] for k in ("ratio", "ratio_lo", "ratio_hi", "task", "source")},
        "b_crit": b_crit, "b_crit_lo": cal["ratio_lo"] * lo, "b_crit_hi": cal["ratio_hi"] * hi,
        "batches": batch_advice(b_crit, config, num_train) if math.isfinite(b_crit) else [],
        "config": config.to_dict(),
        "series": {k: [float(x) for x in v] for k, v in series.items()},
    }
    if "two_batch_b_simple" in series:
        advice["two_batch_b_simple"] = float(series["two_batch_b_simple"][-1])
    return advice


# ----------------------------------------------------------------------------- measuring


def _scalar(v: Any) -> float:
    return float(np.asarray(v).reshape(-1)[0])  # pmap: one copy per device


def measure(run: Any, steps: int, max_seconds: float, ema: float, progress: bool,
            primary: str = "per_example") -> dict[str, np.ndarray]:
    """Runs the first `steps` steps of `run` (built with ``noise_scale=True`` for the
    per-example estimator), stopping early after `max_seconds` (compilation excluded);
    returns the per-step series of the `primary` estimator."""
    state = run.place(run.state)
    rows: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, unit="step", dynamic_ncols=True, desc="advise: measuring B_simple")
    t_ema = g_ema = 0.0
    started = None
    try:
        for step in range(steps):
            images, labels = run.input.batch(step) if run.input else (run.images, run.labels)
            state, metrics = run.train_step(state, images, labels, np.int32(step))
            row = {k: _scalar(metrics[k]) for k in ("loss", "finite", *_PER_EXAMPLE, *_TWO_BATCH)
                   if k in metrics}
            if row["finite"] < 1:
                raise ValueError(f"advise: step {step} has a non-finite loss or gradient "
                                 "(lower TrainConfig.learning_rate)")
            rows.append({"step": step, **row})
            trace, g2 = _estimates(row, primary)
            t_ema = ema * t_ema + (1 - ema) * trace
            g_ema = ema * g_ema + (1 - ema) * g2
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}",
                                B_simple=f"{t_ema / g_ema:.0f}" if g_ema > 0 else "inf",
                                refresh=False)
            started = started or time.perf_counter()  # after the compiling first step
            if time.perf_counter() - started > max_seconds:
                break
    finally:
        if bar is not None:
            bar.close()
        if run.input:
            run.input.close()
    est = np.asarray([_estimates(r, primary) for r in rows], np.float64).reshape(-1, 2)
    series = {"step": np.asarray([r["step"] for r in rows]), "trace_sigma": est[:, 0],
              "grad_sq_norm": est[:, 1], "loss": np.asarray([r["loss"] for r in rows])}
    if primary == "per_example" and rows and _TWO_BATCH[0] in rows[0]:  # a cross-check
        from lars_jax.diagnostics import noise_scale_series

        two = noise_scale_series(*(np.asarray([r[k] for r in rows]) for k in _TWO_BATCH),
                                 decay=ema)
        series["two_batch_b_simple"] = np.asarray(two["b_simple"])
    return series


_PER_EXAMPLE = ("noise_trace_sigma", "noise_grad_sqnorm")
_TWO_BATCH = ("grad_sqnorm_small", "grad_sqnorm_big", "batch_small", "batch_big")


def _estimates(row: Mapping[str, float], primary: str) -> tuple[float, float]:
    """``(tr(Sigma), |G|^2)`` of one step by the chosen estimator."""
    if primary == "per_example":
        return row["noise_trace_sigma"], row["noise_grad_sqnorm"]
    from lars_jax.diagnostics import noise_scale_estimates

    g2, trace = noise_scale_estimates(*(row[k] for k in _TWO_BATCH))
    return float(trace), float(g2)


def estimator_for(config: Any, num_devices: int, requested: str | None = None) -> str:
    """The estimator `advise` uses: `requested`, else ``"per_example"`` (one-batch, from
    every example's norm), or ``"two_batch"`` for BatchNorm models, whose examples are
    coupled (the per-example contributions then overstate tr(Sigma):
    `lars_jax.diagnostics.noise_scale_from_norms`), using the step's micro-batches or
    devices as the small batches.

    Args:
      config: the run's `TrainConfig`.
      num_devices: devices the step runs on.
      requested: ``None`` (choose as above) or one of `ESTIMATORS` (``--estimator``).

    Raises:
      ValueError: an unknown `requested`; ``"per_example"`` for a BatchNorm model;
        ``"two_batch"`` (requested or chosen) with a single gradient group.
    """
    groups = config.grad_accum_steps * num_devices
    if requested is not None:
        if requested not in ESTIMATORS:
            raise ValueError(f"advise --estimator={requested!r}: must be one of {ESTIMATORS}")
        if requested == "per_example" and config.norm == "batch":
            raise ValueError(
                "advise --estimator=per_example: TrainConfig.norm='batch' couples the examples "
                "of a batch, so per-example norms overstate tr(Sigma); use --estimator "
                "two_batch with --grad-accum-steps >= 2, or --norm group/none")
        if requested == "two_batch" and groups < 2:
            raise ValueError(
                f"advise --estimator=two_batch: needs >= 2 gradient groups, got {groups} "
                "(--grad-accum-steps x devices); set --grad-accum-steps >= 2")
        return requested
    if config.norm != "batch":
        return "per_example"
    if groups < 2:
        raise ValueError(
            "advise: TrainConfig.norm='batch' couples the examples of a batch, so per-example "
            "norms do not give tr(Sigma); set --grad-accum-steps >= 2 (the two-batch "
            "estimator over micro-batches; with --bn-span ghost, micro-batch = ghost size "
            "matches experiment 5) or --norm group/none")
    return "two_batch"


# ----------------------------------------------------------------------------- output


def plot_advice(series: Mapping[str, np.ndarray], advice: Mapping[str, Any], out: Path) -> Path:
    """``b_simple.png``: the EMA of B_simple with its interval, the window means (the
    trend) and the predicted B_crit."""
    from lars_jax.diagnostics import noise_scale_average
    from lars_jax.runs.plotting import _figure, _save

    avg = noise_scale_average(series["trace_sigma"], series["grad_sq_norm"], decay=advice["ema"])
    x = series["step"]
    b, lo, hi = (np.asarray(v, np.float64) for v in (avg.b_simple, avg.b_simple_lo,
                                                      avg.b_simple_hi))
    top = np.nanmax(np.where(np.isfinite(b), b, np.nan)) * 3 if np.isfinite(b).any() else 1.0
    fig = _figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.fill_between(x, lo, np.minimum(hi, top), alpha=0.25, label="95% interval (EMA)")
    ax.plot(x, np.where(np.isfinite(b), b, np.nan), label=f"B_simple, EMA {advice['ema']:g}")
    win = advice["trend"]["windows"]
    growth = advice["trend"]["growth"]
    ax.errorbar([(w["step_first"] + w["step_last"]) / 2 for w in win],
                [w["b_simple"] for w in win], yerr=[min(w["se"] * 1.96, top) for w in win],
                fmt="o-", color="black", label=f"window means: trend x{growth:.2f}")
    if "two_batch_b_simple" in series:
        ax.plot(x, series["two_batch_b_simple"], ":", label="two-batch estimator")
    ax.axhline(advice["b_crit"], color="red", ls="--",
               label=f"predicted B_crit = {advice['calibration']['ratio']:.2f} x B_simple")
    ax.set_xlabel("step")
    ax.set_ylabel("batch size")
    ax.set_yscale("log")
    ax.set_title("Gradient noise scale B_simple = tr(Sigma)/|G|^2 (grows during training)")
    ax.legend(fontsize=8)
    return _save(fig, out)


def format_advice(a: Mapping[str, Any]) -> str:
    """The printed summary of `advice.json`."""
    tr = a["trend"]
    cal = a["calibration"]
    lines = [
        f"estimator: {a['estimator']}",
        f"B_simple = {a['b_simple']:.0f}  (95% interval {a['b_simple_lo']:.0f} to "
        f"{a['b_simple_hi']:.0f}; EMA {a['ema']:g} over {a['steps_measured']} steps)",
        f"trend: B_simple went from {tr['windows'][0]['b_simple']:.0f} to "
        f"{tr['windows'][-1]['b_simple']:.0f} over the measured steps (x{tr['growth']:.2f}); "
        "it keeps growing as training proceeds, so read these numbers as lower bounds",
        f"predicted critical batch B_crit = {a['b_crit']:.0f} (interval {a['b_crit_lo']:.0f} "
        f"to {a['b_crit_hi']:.0f}) = {cal['ratio']:.2f} x B_simple; the ratio "
        f"[{cal['ratio_lo']:.2f}, {cal['ratio_hi']:.2f}] was measured on one task only "
        f"({cal['source']})",
    ]
    if "two_batch_b_simple" in a:
        lines.append(f"two-batch estimator on the same steps: B_simple = "
                     f"{a['two_batch_b_simple']:.0f}")
    if not a["batches"]:
        lines.append("no batch advice: the averaged |G|^2 is not positive yet (noise dominates "
                     "the measured steps); measure longer (--steps, --max-seconds)")
        return "\n".join(lines)
    lines.append("batch  steps/S_min  examples/E_min  lr(linear)  lr(sqrt)  warmup steps")
    for r in a["batches"]:
        mark = "  <- recommended" if r["recommended"] else ""
        lines.append(f"{r['batch_size']:>5}  {r['steps_over_min']:>11.2f}  "
                     f"{r['examples_over_min']:>14.2f}  {r['lr_linear']:>10.4g}  "
                     f"{r['lr_sqrt']:>8.4g}  {r['warmup_steps']:>12}{mark}")
    return "\n".join(lines)


def advise(config: Any, *, steps: int = DEFAULT_STEPS, max_seconds: float = DEFAULT_MAX_SECONDS,
           ema: float = 0.98, data: Any = None, estimator: str | None = None
           ) -> dict[str, Any]:
    """Measures B_simple on the first steps of `config`'s run and writes the advice.

    Args:
      config: a `lars_jax.train.TrainConfig` (validated here, before any compute).
      steps: at most this many steps (>= 10), bounded by ``config``'s total steps.
      max_seconds: stop measuring after this long (compilation excluded).
      ema: EMA decay of the averages.
      data: a `lars_jax.train.Data` instead of ``config.dataset``.
      estimator: ``"per_example"``, ``"two_batch"`` or ``None`` (by the model:
        :func:`estimator_for`).

    Returns:
      The advice (also written to ``<workdir>/advice.json``, with ``b_simple.png``).

    Raises:
      ValueError: a bad option or config (one line naming it).
    """
    import jax

    from lars_jax.train import loop

    _check_options(steps, max_seconds, ema)
    config.validate()
    primary = estimator_for(config, config.num_devices or jax.device_count(), estimator)
    loop._preflight(config, data)  # train's one-line checks: devices, workdir, data set
    run = loop._build(config, data, noise_scale=primary == "per_example")
    num_train = run.input.num_train if run.input else len(run.data.train_labels)
    series = measure(run, min(steps, run.total_steps), max_seconds, ema, config.progress,
                     primary)
    if len(series["step"]) < 2:
        raise ValueError(f"advise --steps={steps}: too few steps measured "
                         f"({len(series['step'])}); raise --max-seconds or --steps")
    advice = {"estimator": primary, **_advice(series, config, num_train, ema)}
    out = Path(config.workdir)
    out.mkdir(parents=True, exist_ok=True)
    from lars_jax.runs.run_files import write_json

    write_json(out / ADVICE_FILE, advice)
    plot_advice(series, advice, out / PLOT_FILE)
    return advice


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``lars-jax advise`` to the CLI's `commands` with its options; the CLI adds
    train's config flags."""
    parser = commands.add_parser(
        "advise", allow_abbrev=False, help="measure the gradient noise scale and advise batch "
        "size, lr and warmup", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE",
                        help="TOML or JSON file of config fields (flags override it)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"measure at most this many steps (default {DEFAULT_STEPS})")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="stop measuring after this many seconds, compilation excluded "
                        f"(default {DEFAULT_MAX_SECONDS:g})")
    parser.add_argument("--ema", type=float, default=0.98,
                        help="EMA decay of tr(Sigma) and |G|^2 (default 0.98: about 100 steps)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default=None,
                        help="per_example: one batch, from every example's gradient norm "
                        "(refused with --norm batch); two_batch: the step's gradient groups "
                        "(micro-batches x devices, needs >= 2) against the whole batch "
                        "(default: per_example, two_batch for --norm batch)")
    return parser


def run_command(config: Any, args: Any) -> int:
    """``lars-jax advise``: one-line errors (exit 2) for bad options or config."""
    from lars_jax.train.config import TrainConfig

    if config.workdir == TrainConfig.workdir:  # not chosen: keep clear of train's folder
        config = type(config)(**{**config.to_dict(), "workdir": "runs/advise"})
    try:
        advice = advise(config, steps=args.steps, max_seconds=args.max_seconds, ema=args.ema,
                        estimator=args.estimator)
    except ValueError as e:
        print(f"lars-jax advise: error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    print(format_advice(advice))
    print(f"lars-jax advise: wrote {config.workdir}/{ADVICE_FILE} and {config.workdir}/{PLOT_FILE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lars_jax.runs.advise [SUMMARY]``: regenerates ``calibration.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    calib = write_calibration(args[0] if args else SUMMARY_FILE)
    print(f"wrote {CALIBRATION_FILE}: B_crit/B_simple = {calib['ratio']:.3f} "
          f"[{calib['ratio_lo']:.3f}, {calib['ratio_hi']:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
