"""Experiment 1, ResNet-8 arm v3: Goyal's linear scaling + warmup and LARS, constant lr.

Linear lr scaling + warmup (Goyal et al.) and LARS on a reduced-width ResNet-8, warmup then
a constant lr, gated on rule 1's flattening test.

The v2 design (``linear_scaling_resnet8_flat``: B0 = 16, batches 16, 128 and 512, E =
102,400 examples, cosine decay after warmup) was timed and not run: under cosine decay the
base batch's last-quarter mean loss fell 12-14% below the third quarter's, above the
registered 10%, at every budget rule 8 allows, and part of that fall is the schedule's own
annealing rather than under-training. This design keeps everything of v2 (model, batches,
budget, lr grids, seeds, the gate with its 10% and the MLP experiment's decisions) except the
schedule: **a gradual warmup over 5% of the budget from the unscaled lr, then the lr held
constant** to the end, at every batch. Goyal's rule is about the lr's scale (lr = base lr x
B/B0) and the warmup; a constant lr after warmup is the same schedule family at every batch,
so the comparison between batches stays fair, and under it the loss settles at a plateau, so
the quarter test measures whether training has stopped improving. It differs from the MLP
experiment's cosine schedule (said in the report).

Unregistered timing runs (``linear_scaling_resnet8_flat/design_timing.json``, key
``constant_lr``) put the base batch's fall at 4-6% (SGD and LARS, seed 0) at this budget before this
criterion was written.

Usage:
  python experiments/linear_scaling_resnet8_const.py --preset cpu
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import evidence as ev  # noqa: E402
from experiments import harness  # noqa: E402
from experiments import linear_scaling_resnet8 as r8  # noqa: E402
from experiments import linear_scaling_resnet8_flat as v2  # noqa: E402
from experiments import linear_scaling_warmup as mlp  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "linear_scaling_resnet8_const"
SCHEDULE = "constant"
BASE_BATCH, BATCHES, EXAMPLES, EVAL_SEEDS = (v2.BASE_BATCH, v2.BATCHES, v2.EXAMPLES,
                                             v2.EVAL_SEEDS)

SCHEDULE_RULE = (f"Schedule: a gradual warmup over {100 * mlp.WARMUP_FRAC:g}% of the budget "
                 f"from the unscaled lr, then the lr held constant to the end, at every batch "
                 f"(not the MLP experiment's cosine decay: under a constant lr the base "
                 f"batch's loss settles at a plateau, so the rule 1 gate measures whether "
                 f"training has stopped improving, not the schedule's annealing). ")

LINEAR_SCALING = ev.Criterion(claim=mlp.LINEAR_SCALING.claim,
                              rule=SCHEDULE_RULE + v2.LINEAR_SCALING.rule,
                              decide=v2.LINEAR_SCALING.decide)
LARS_EXTENDS = ev.Criterion(claim=mlp.LARS_EXTENDS.claim,
                            rule=SCHEDULE_RULE + v2.LARS_EXTENDS.rule,
                            decide=v2.LARS_EXTENDS.decide)


def base_config(preset: str) -> TrainConfig:
    """The v2 design's config (ResNet-8 width 0.25, ghost BN over 4, B0 = 16, E = 102,400
    examples, warmup over 5%) with a constant lr after the warmup."""
    return dataclasses.replace(v2.base_config(preset), schedule=SCHEDULE)


def registered(preset: str, base: TrainConfig) -> harness.Registered:
    spec = harness.criterion_spec(
        "\n\n".join(c.rule for c in (LINEAR_SCALING, LARS_EXTENDS)),
        grids={"model": v2.MODEL, "width": v2.WIDTH, "batches": BATCHES[preset],
               "lr_centre": v2.LR_CENTRE, "lr_factors": v2.LR_FACTORS,
               "lr_bound": v2.LR_BOUND},
        seeds={"selection": mlp.SELECTION_SEED, "evaluation": EVAL_SEEDS[preset]},
        budgets={"examples": EXAMPLES[preset], "epochs": base.epochs,
                 "base_batch": BASE_BATCH[preset], "warmup_frac": mlp.WARMUP_FRAC,
                 "schedule": base.schedule, "margin_pp": mlp.MARGIN_PP,
                 "bn_group": v2.BN_GROUP, "min_scored_steps": harness.MIN_SCORED_STEPS,
                 "dtype": base.dtype, "log_every_steps": base.log_every_steps,
                 "flat_max_fall": v2.FLAT_MAX_FALL, "min_flat_seeds": v2.MIN_FLAT_SEEDS},
        decide=[mlp._acc, mlp.cells, mlp.keeps, mlp.decide_linear_scaling,
                mlp.decide_lars_extends, v2.quarter_losses, v2.base_flattening,
                v2.flat_gate, v2.decide_linear_scaling, v2.decide_lars_extends, v2.to_row])
    return harness.Registered(spec, lambda rows: v2.plan(preset, rows), v2.to_row,
                              (mlp.SELECTION_SEED,))


# ------------------------------------------------------------------ report


def timing_text(out: Path) -> str:
    """The unregistered constant-lr timing runs (in the v2 folder's design_timing.json)
    that were measured before this criterion was written."""
    p = out.parent / v2.NAME / v2.TIMING_FILE
    t = json.loads(p.read_text()).get("constant_lr") if p.exists() else None
    if not t:
        return "The constant-lr timing runs are missing (v2's `design_timing.json`)."
    table = "\n".join(
        f"| {r['optimizer'].upper()} | {r['batch']} | {r['examples']:,} | {r['steps']} | "
        f"{r['peak_lr']:g} | {r['q3']:.3f} | {r['q4']:.3f} | **{100 * r['fall']:.1f}%** | "
        f"{100 * r['acc']:.1f}% | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['load']:.1f} |"
        for r in t["runs"])
    return (
        f"Measured before this criterion was written: {t['measured']}; load {t['load']}. "
        f"Config: {t['config']}. Single runs, seed 0 (file "
        f"`results/{v2.NAME}/{v2.TIMING_FILE}`, key `constant_lr`, beside v2's cosine "
        f"timing runs; not registered, never scored).\n\n"
        f"| optimizer | batch | examples E | steps | peak lr | loss, 3rd quarter | loss, "
        f"last quarter | lower by | test accuracy | CPU s | wall s | load |\n"
        f"| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n"
        f"{table}\n\n{t['arithmetic']}")


def missing_runs(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The runs the registered plan still asks for, given the rows (none: complete)."""
    done = {harness.point_key(r["point"]) for r in rows if r.get("point")}
    return [p for p in v2.plan("cpu", rows) if harness.point_key(p) not in done]


def missing_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The runs the registered plan still asks for (the arm stopped before them: a cut in
    breadth, never in steps), by cell; empty when the plan is complete."""
    todo = missing_runs(rows)
    if not todo:
        return ""
    cellz: dict[tuple[str, int], int] = {}
    for p in todo:
        key = (p["optimizer"], int(p["batch_size"]))
        cellz[key] = cellz.get(key, 0) + 1
    return (f" **Not run:** the arm was stopped at the session's deadline with {len(todo)} "
            f"runs of its plan still to start (at least; a finished selection grid can ask "
            f"for more): " + ", ".join(f"{o.upper()} B={b}: {n}" for (o, b), n in
                                        sorted(cellz.items()))
            + "; cells without their 4 evaluation seeds are not scored, so a verdict that "
            "needs them is inconclusive (the plan's priority order: SGD before LARS, the "
            "base batch, then 512, then 128).")


def limits_text(rows: Sequence[Mapping[str, Any]], v: Mapping[str, tuple[str, list[str]]]
                ) -> str:
    return (
        v2.limits_text(rows, v).replace("under a cosine schedule, whose own decay lowers the "
                                        "loss at the end even of a converged run",
                                        "under a constant lr after warmup")
        + " The schedule differs from the MLP experiment's (cosine decay): without the "
        "final annealing every run ends at a noisier, higher-loss point, so the test "
        "accuracies are lower than under cosine (about 80-82% vs 85% at B0 in the timing "
        "runs) and the paired differences carry more seed noise; the claim is about the "
        "lr's scale and the warmup, which are the same as in the MLP experiment."
        + spread_text(rows) + missing_text(rows))


def spread_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The largest range of final test accuracies over one cell's evaluation seeds."""
    accs: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r.get("scored") and r.get("test_accuracy") is not None:
            accs.setdefault((r["optimizer"], int(r["batch_size"])), []).append(
                float(r["test_accuracy"]))
    if not accs:
        return ""
    (o, b), a = max(accs.items(), key=lambda kv: max(kv[1]) - min(kv[1]))
    return (f" Read at the end of a constant lr, a run's test accuracy is one draw from a "
            f"noisy plateau: the evaluation seeds of {o.upper()} B={b} end "
            f"{100 * min(a):.1f}% to {100 * max(a):.1f}%, so 4 seeds give paired intervals "
            f"much wider than the 1-point margin, and the arm can decide the claim only "
            f"where a difference is far larger than that noise.")


def analyse(preset: str, run: harness.ExperimentRun) -> dict:
    from lars_jax.runs.report import Section, write_report

    rows, out, b0 = run.rows, run.out, BASE_BATCH[preset]
    v, verdicts, images = r8.verdicts_and_plots(out, rows, b0, LINEAR_SCALING, LARS_EXTENDS)
    write_report(
        out, title="Linear scaling + warmup (Goyal et al.) with LARS: ResNet-8 arm v3 "
                   "(constant lr after warmup, rule 1 gated)",
        intro=("Issue 23's convolutional arm of `linear_scaling_warmup`, third design. It "
               "supersedes `linear_scaling_resnet8` (B0 = 4, 25,600 examples, under-trained) "
               f"and replaces `{v2.NAME}` (the same design under cosine decay, timed and not "
               "run: its base batch's loss fell 12-14% in the last quarter, partly the "
               "schedule's own annealing). Only the schedule differs from v2: warmup, then a "
               "constant lr. Raw rows: `rows.jsonl` (one per run, with its sha)."),
        sections=[Section("Setup", v2.setup_text(run.base)),
                  Section("Design notes (timing before registering)", timing_text(out)),
                  Section("Pre-registration", harness.registered_note(out, rows)),
                  Section("Verdicts", verdicts),
                  Section("Cells", mlp.cell_table(rows, b0), images),
                  Section("Limits of the evidence", limits_text(rows, v)),
                  Section("Compute", harness.compute_note(rows, out))])
    return r8.save_summary(out, preset, readme_table(rows, v), v)


def readme_table(rows: Sequence[Mapping[str, Any]], v: Mapping[str, tuple[str, list[str]]]
                 ) -> list[dict[str, str]]:
    """v2's README rows under this arm's label, saying when the plan was not finished."""
    table = v2.readme_table(rows, v, label="ResNet-8 arm v3 (constant lr)")
    n = len(missing_runs(rows))
    for t in table:
        t["result"] += (f"; incomplete: stopped at the deadline with {n} planned runs not "
                        f"started (report's limits)." if n else "")
    return table


def main(argv: list[str] | None = None) -> dict:
    return harness.experiment_main(NAME, __doc__, base_config, registered, analyse, argv)


if __name__ == "__main__":
    main()
