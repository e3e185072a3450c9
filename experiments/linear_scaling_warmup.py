"""Experiment 1: linear learning-rate scaling and gradual warmup (Goyal et al. 2017).

Claim (Goyal et al.; seed 004, "double the batch, double the lr"): with a fixed epoch
budget, scaling the learning rate linearly with the batch size (lr = lr0 * B / B0) plus a
gradual warmup keeps accuracy at the base batch's level up to 32x the base batch (8k from
256 for ResNet-50 on ImageNet). LARS (You et al.) is meant to push that limit further.

Design v3 (issue 23): Goyal's range ends about at ImageNet's critical batch, so here the
base batch is small enough (B0 = 16) that 32 B0 = 512 lies well below this task's B_crit
(experiment 5, v2: 2.5k-4k) and still gets at least 200 steps of the fixed 2-epoch budget.
Batches 1024 and 2048 lie beyond the range: they get fewer than 200 steps, so they are
budget-bound for the Goyal and LARS verdicts (shown, not scored), and serve only the joint
prediction of McCandlish and Goyal (claims.md section 9): at a budget of E examples the
largest batch that keeps the base accuracy is B_max = B_crit (E/E_min - 1), with B_crit and
E_min read from experiment 5's summary. Per (optimizer, batch) cell the lr is chosen on a
selection seed (a 3-point 2x grid around the linear rule's prediction, extended while its
best is on an edge, within 4x); 4 evaluation seeds then run at that lr and every verdict
rests on paired differences over them. The criterion is written to ``criterion.json``
before the first run.

Usage:
  python experiments/linear_scaling_warmup.py --preset cpu
  python experiments/linear_scaling_warmup.py --preset cpu --report-only
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from experiments import evidence as ev  # noqa: E402
from experiments import harness  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

NAME = "linear_scaling_warmup"
EPOCHS = {"smoke": 1.0, "cpu": 2.0}
BASE_BATCH = {"smoke": 16, "cpu": 16}
# priority order: base, top of the claim's range, inside it, then beyond (B_max only)
BATCHES = {"smoke": {"sgd": [16, 32], "lars": [16]},
           "cpu": {"sgd": [16, 512, 256, 64, 1024, 2048], "lars": [16, 512, 256, 64]}}
SELECTION_SEED = 100
EVAL_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3)}
# the linear rule's prediction: base lr at B0 = 16 (v2's centres at 128, x 16/128)
LR_CENTRE = {"sgd": 0.00625, "lars": 0.5}
LR_FACTORS = {"smoke": (1.0,), "cpu": (0.5, 1.0, 2.0)}
LR_BOUND = {"smoke": 1.0, "cpu": 4.0}
WARMUP_FRAC = 0.05  # gradual warmup over 5% of the budget, from the unscaled lr
BN_GROUP = 16
MARGIN_PP = 1.0  # "keeps accuracy": the paired drop from the base batch stays within 1 point
CLAIM_FACTOR = 32
B_MAX_FACTOR = 2.0  # the B_max prediction is supported within a factor 2
EXP5_TARGETS = (0.14, 0.13, 0.12)
OPTIMIZERS = {"sgd": "SGD+momentum", "lars": "LARS"}


# ------------------------------------------------------------------ criteria (pre-set)


def cells(rows: Sequence[Mapping[str, Any]], optimizer: str) -> dict[int, dict[str, Any]]:
    """Per batch: selection-seed accuracy per lr, the chosen lr, its edge mark, and the
    evaluation seeds' accuracy at that lr (scored rows only)."""
    out: dict[int, dict[str, Any]] = {}
    mine = [r for r in rows if r["optimizer"] == optimizer]
    for b in sorted({int(r["batch_size"]) for r in mine}):
        cell = [r for r in mine if int(r["batch_size"]) == b]
        scores = {float(r["learning_rate"]): _acc(r) for r in cell
                  if int(r["seed"]) == SELECTION_SEED}
        best, edge = ev.best_on_grid(scores)
        ev_rows = [r for r in cell if r.get("scored") and best is not None
                   and math.isclose(float(r["learning_rate"]), best)]
        out[b] = {"scores": scores, "best_lr": best, "edge": edge,
                  "seeds": {int(r["seed"]): _acc(r) for r in ev_rows},
                  "budget_exempt": any(r.get("budget_exempt") for r in cell),
                  "steps": max((int(r["total_steps"] or 0) for r in cell), default=0)}
    return out


def _acc(r: Mapping[str, Any]) -> float:
    a = r.get("test_accuracy")
    return float(a) if isinstance(a, int | float) and math.isfinite(a) else math.nan


def keeps(rows: Sequence[Mapping[str, Any]], optimizer: str, base_batch: int,
          exempt_ok: bool = False) -> dict[int, tuple[str, ev.Interval, str]]:
    """Per batch above the base: ``(status, paired difference acc(B) - acc(B0), why)``;
    status by rule 4 with the margin ``[-MARGIN_PP, inf)``; an edge cell is ``edge``, a
    budget-bound one ``budget-bound`` (unless ``exempt_ok``: the B_max test)."""
    cs = cells(rows, optimizer)
    if base_batch not in cs or cs[base_batch]["edge"]:
        return {}
    base = cs[base_batch]["seeds"]
    out = {}
    for b, c in cs.items():
        if b <= base_batch:
            continue
        d = ev.paired(c["seeds"], base)
        if c["edge"]:
            out[b] = ("edge", d, f"best lr on the {c['edge']} edge of its bounded grid")
        elif c["budget_exempt"] and not exempt_ok:
            out[b] = ("budget-bound", d, f"{c['steps']} steps < 200")
        else:
            s, why = ev.margin_status(ev.Interval(*[100 * x if i < 4 else x for i, x in
                                                    enumerate(d)]), low=-MARGIN_PP)
            out[b] = (s, d, why)
    return out


def decide_linear_scaling(rows: Sequence[Mapping[str, Any]], base_batch: int = 16
                          ) -> tuple[ev.Verdict, list[str]]:
    """Goyal's claim for SGD+momentum (see ``LINEAR_SCALING.rule``)."""
    st = keeps(rows, "sgd", base_batch)
    if not st:
        return "inconclusive", ["- No scored SGD cell at the base batch (or it is on an edge)."]
    top = base_batch * CLAIM_FACTOR
    in_claim = {b: s for b, s in st.items() if b <= top}
    details = [f"- SGD, accuracy at B minus at B={base_batch}, paired over evaluation seeds "
               f"(points, mean ± se [95% interval]), margin -{MARGIN_PP:g}:"]
    details += [f"  - B={b}: {s[1].fmt(scale=100, unit=' pt')} -> **{s[0]}** ({s[2]})"
                for b, s in sorted(st.items())]
    statuses = [s[0] for s in in_claim.values()]
    if in_claim and all(s == "holds" for s in statuses):
        return "supported", details
    if "fails" in statuses:
        return "contradicted", details
    return "inconclusive", details


def decide_lars_extends(rows: Sequence[Mapping[str, Any]], base_batch: int = 16
                        ) -> tuple[ev.Verdict, list[str]]:
    """LARS extends the range of linear scaling (see ``LARS_EXTENDS.rule``)."""
    sgd = keeps(rows, "sgd", base_batch)
    cs, cl = cells(rows, "sgd"), cells(rows, "lars")
    details = ["- LARS minus SGD (each at its own selected lr), paired over evaluation seeds:"]
    wins, losses = 0, 0
    for b in sorted(set(cs) & set(cl)):
        if b <= base_batch:
            continue
        d = ev.paired(cl[b]["seeds"], cs[b]["seeds"])
        if cs[b]["edge"] or cl[b]["edge"] or cs[b]["budget_exempt"] or cl[b]["budget_exempt"]:
            details.append(f"  - B={b}: {d.fmt(scale=100, unit=' pt')} -> not scored (edge "
                           f"or budget-bound)")
            continue
        s, why = ev.margin_status(ev.Interval(*[100 * x if i < 4 else x for i, x in
                                                enumerate(d)]), low=0.0)
        sgd_fails = sgd.get(b, ("",))[0] == "fails"
        wins += sgd_fails and s == "holds" and d.lo > 0
        losses += sgd_fails and s == "fails"
        details.append(f"  - B={b}: {d.fmt(scale=100, unit=' pt')}, SGD keeps the base "
                       f"accuracy: {sgd.get(b, ('n/a',))[0]}; LARS >= SGD: {s} ({why})")
    if wins and not losses:
        return "supported", details
    if losses and not wins:
        return "contradicted", details
    details.append("- No scored batch where SGD fails and LARS decides the difference."
                   if not (wins or losses) else "- Mixed.")
    return "inconclusive", details


def b_max_prediction(exp5: Mapping[str, Any] | None, base_error: float, budget: float
                     ) -> dict[str, Any] | None:
    """McCandlish's B_max = B_crit (E/E_min - 1) at the experiment-5 target nearest to the
    base batch's error plus the margin (ties: the harder target), with the range spanned by
    the ends of B_crit's and E_min's intervals."""
    fits = (exp5 or {}).get("fits") or {}
    if not fits or not math.isfinite(base_error):
        return None
    want = base_error + MARGIN_PP / 100
    key = min(fits, key=lambda k: (abs(float(k) - want), float(k)))
    f = fits[key]

    def bmax(bc: float, em: float) -> float:
        return bc * (budget / em - 1) if em and math.isfinite(em) else math.nan

    ends = [bmax(bc, em) for bc in (f.get("b_crit_lo"), f.get("b_crit_hi"))
            for em in (f.get("e_min_lo"), f.get("e_min_hi"))
            if bc is not None and em is not None]
    ends = [e for e in ends if math.isfinite(e)]
    return {"target": float(key), "b_crit": f.get("b_crit"), "e_min": f.get("e_min"),
            "b_max": bmax(f.get("b_crit") or math.nan, f.get("e_min") or math.nan),
            "lo": min(ends) if ends else math.nan, "hi": max(ends) if ends else math.nan,
            "status": f.get("status")}


def decide_b_max(rows: Sequence[Mapping[str, Any]], exp5: Mapping[str, Any] | None = None,
                 base_batch: int = 16, budget: float = 120000.0
                 ) -> tuple[ev.Verdict, list[str]]:
    """The joint prediction (see ``B_MAX.rule``)."""
    st = keeps(rows, "sgd", base_batch, exempt_ok=True)
    base = cells(rows, "sgd").get(base_batch, {}).get("seeds", {})
    base_err = 1 - float(np.mean(list(base.values()))) if base else math.nan
    pred = b_max_prediction(exp5, base_err, budget)
    if not st or pred is None or not math.isfinite(pred["b_max"]) or pred["b_max"] <= 0:
        return "inconclusive", [f"- No prediction (experiment 5 fit missing or E < E_min): "
                                f"{pred}."]
    lo_b, hi_b = base_batch, None
    for b in sorted(st):
        if st[b][0] == "holds" and hi_b is None:
            lo_b = b
        elif st[b][0] == "fails" and hi_b is None:
            hi_b = b
        elif hi_b is None:
            break  # an undecided or edge batch: the bracket ends here
    details = [f"- Prediction at the {100 * pred['target']:g}% target (base error "
               f"{100 * base_err:.2f}% + {MARGIN_PP:g} pt): B_max = {pred['b_crit']:.0f} x "
               f"({budget:.0f}/{pred['e_min']:.0f} - 1) = **{pred['b_max']:.0f}** (from the "
               f"interval ends {pred['lo']:.0f} to {pred['hi']:.0f}).",
               f"- Measured: every batch up to {lo_b} keeps the base accuracy; "
               + (f"B={hi_b} fails." if hi_b else "no batch after it fails (or it is "
                  "undecided).")]
    if hi_b is None:
        if lo_b > B_MAX_FACTOR * pred["hi"]:
            return "contradicted", details
        return "inconclusive", details
    meas = math.sqrt(lo_b * hi_b)
    details.append(f"- Measured B_max (geometric middle of the bracket) {meas:.0f}; ratio "
                   f"to the prediction {meas / pred['b_max']:.2f}.")
    if pred["b_max"] / B_MAX_FACTOR <= meas <= B_MAX_FACTOR * pred["b_max"]:
        return "supported", details
    if hi_b < pred["lo"] / B_MAX_FACTOR or lo_b > B_MAX_FACTOR * pred["hi"]:
        return "contradicted", details
    return "inconclusive", details


LINEAR_SCALING = ev.Criterion(
    claim=("With lr = lr0 x B/B0 and a gradual warmup, the accuracy of a fixed epoch budget "
           "stays at the base batch's level up to 32x the base batch (Goyal et al. 2017: "
           "B0=256 to 8k for ResNet-50, about ImageNet's critical batch)."),
    rule=(f"SGD+momentum, B0=16, 2 epochs; per batch the lr is the best of a 2x grid around "
          f"the linear rule's prediction on selection seed {SELECTION_SEED} (extended while "
          f"on an edge, within 4x); 4 evaluation seeds at that lr. A batch *holds* when the "
          f"95% interval of the paired difference acc(B) - acc(B0) lies wholly above "
          f"-{MARGIN_PP:g} point, *fails* when it lies wholly below, else undecided; a cell "
          f"whose lr stays on an edge, or with fewer than 200 steps, is not scored. "
          f"**Supported** if every scored batch of (B0, 32 B0] = 64, 256, 512 holds; "
          f"**contradicted** if any fails; **inconclusive** otherwise."),
    decide=decide_linear_scaling,
)

LARS_EXTENDS = ev.Criterion(
    claim=("LARS keeps the accuracy of linear scaling to larger batches than SGD+momentum "
           "(You et al. 2017)."),
    rule=("Per scored batch above B0 (at least 200 steps, neither lr on an edge): the paired "
          "difference LARS - SGD over the 4 evaluation seeds. **Supported** if at some batch "
          "where SGD fails its interval lies wholly above 0 and at no such batch wholly below; "
          "**contradicted** if at some batch where SGD fails it lies wholly below 0 and at none "
          "above; **inconclusive** otherwise (including: SGD fails at no scored batch)."),
    decide=decide_lars_extends,
)

B_MAX = ev.Criterion(
    claim=("McCandlish et al.'s steps/examples trade-off sets a batch ceiling for a fixed "
           "budget of E examples: B_max = B_crit (E/E_min - 1) (claims.md section 9)."),
    rule=(f"B_crit and E_min (with their 95% intervals) from experiment 5's summary, at its "
          f"target nearest to the base batch's error + {MARGIN_PP:g} point; E = 2 epochs = "
          f"120000 examples. Measured: SGD batches by the same per-batch rule (budget-bound "
          f"batches included: this test is budget_exempt); B_max lies between the last batch "
          f"of the unbroken run of batches that hold and the first that fails, and is "
          f"read as their geometric middle. **Supported** when that lies within a factor "
          f"{B_MAX_FACTOR:g} of the prediction; **contradicted** when the bracket lies wholly "
          f"beyond a factor {B_MAX_FACTOR:g} of the prediction's range; **inconclusive** "
          f"otherwise."),
    decide=decide_b_max,
)


# ------------------------------------------------------------------ runs


def base_config(preset: str) -> TrainConfig:
    epochs = EPOCHS[preset]
    common = dict(dtype="float32", trust_coefficient=0.001, optimizer="sgd",
                  base_batch_size=BASE_BATCH[preset], lr_scaling="linear", momentum=0.9,
                  weight_decay=5e-4, schedule="cosine", warmup_start="base",
                  warmup_epochs=round(WARMUP_FRAC * epochs, 6), bn_span="ghost",
                  bn_ghost_size=BN_GROUP, checkpoint_every_steps=-1, plot=False,
                  progress=False, label_smoothing=0.0, epochs=epochs, model="mlp2",
                  width=1.0, dataset="fashion_mnist", crop_padding=0, flip=False,
                  num_devices=1, eval_every_epochs=0.0)
    if preset == "smoke":
        return TrainConfig(**common, train_subset=256, test_subset=256, log_every_steps=4,
                           steps_per_call=4)
    if preset != "cpu":
        raise ValueError(f"preset must be 'smoke' or 'cpu' (v3 defines no GPU preset), "
                         f"got {preset!r}")
    return TrainConfig(**common, log_every_steps=50, steps_per_call=25)


def _point(optimizer: str, b: int, lr: float, seed: int) -> dict:
    return {"optimizer": optimizer, "batch_size": b, "learning_rate": lr, "seed": seed}


def plan(preset: str, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per cell in priority order: the selection grid, its edge extension, then the
    evaluation seeds at the selected lr."""
    return plan_cells(rows, BATCHES[preset], lambda opt, b: LR_CENTRE[opt],
                      LR_FACTORS[preset], LR_BOUND[preset], EVAL_SEEDS[preset])


def plan_cells(rows: Sequence[Mapping[str, Any]], batches: Mapping[str, Sequence[int]],
               centre: Callable[[str, int], float], factors: Sequence[float], bound: float,
               eval_seeds: Sequence[int], edge_seeds_last: bool = False) -> list[dict]:
    """The adaptive plan of a linear-scaling sweep (shared with the ResNet-8 arm).

    Per (optimizer, batch) cell in priority order: the selection grid ``centre(opt, b) x
    factors`` on :data:`SELECTION_SEED`, its 2x extension while the best is on an edge and
    within ``bound`` x the centre (``bound=1``: no extension), then ``eval_seeds`` at the
    selected lr. With ``edge_seeds_last`` the evaluation seeds of a cell whose best stays on
    an edge (shown, never scored) come after those of every interior cell.
    """
    out: list[dict] = []
    late: list[dict] = []
    for opt, bs in batches.items():
        cs = cells(rows, opt)
        for b in bs:
            c = centre(opt, b)
            grid = [c * f for f in factors]
            out += [_point(opt, b, lr, SELECTION_SEED) for lr in grid]
            scores = cs.get(b, {}).get("scores", {})
            if not all(any(math.isclose(lr, s) for s in scores) for lr in grid):
                continue
            nxt = ev.next_grid_point(scores, bounds=(c / bound * (1 - 1e-9),
                                                     c * bound * (1 + 1e-9)))
            if nxt is not None:
                out.append(_point(opt, b, nxt, SELECTION_SEED))
                continue
            if cs[b]["best_lr"] is not None:
                seeds = [_point(opt, b, cs[b]["best_lr"], s) for s in eval_seeds]
                (late if edge_seeds_last and cs[b]["edge"] else out).extend(seeds)
    return out + late


def to_row(res: Mapping[str, Any], run: Path, point: Mapping[str, Any]) -> dict:
    c = harness.config_of(res)
    m = harness.read_metrics(res, run.parent)
    acc = harness.final_accuracy(res)
    b, steps = int(c["batch_size"]), (res.get("summary") or {}).get("steps")
    xs, ys = harness.curve(m, "loss", x="step")
    keep = slice(None, None, max(1, len(xs) // 40))
    return {"optimizer": c["optimizer"], "batch_size": b, "seed": int(c["seed"]),
            "learning_rate": float(c["learning_rate"]),
            "peak_lr": float(c["learning_rate"]) * b / int(c["base_batch_size"]),
            "test_accuracy": acc if math.isfinite(acc) else None,
            "outcome": harness.outcome(res), "total_steps": steps,
            "budget_exempt": steps is not None and int(steps) < harness.MIN_SCORED_STEPS,
            "bn_examples": min(int(c["bn_ghost_size"]), b),
            "role": "selection" if int(c["seed"]) == SELECTION_SEED else "evaluation",
            "loss_curve": [[int(x), round(float(y), 4)] for x, y in zip(xs[keep], ys[keep],
                                                                         strict=True)]}


def registered(preset: str, base: TrainConfig) -> harness.Registered:
    spec = harness.criterion_spec(
        "\n\n".join(c.rule for c in (LINEAR_SCALING, LARS_EXTENDS, B_MAX)),
        grids={"batches": BATCHES[preset], "lr_centre": LR_CENTRE,
               "lr_factors": LR_FACTORS[preset], "lr_bound": LR_BOUND[preset]},
        seeds={"selection": SELECTION_SEED, "evaluation": EVAL_SEEDS[preset]},
        budgets={"epochs": EPOCHS[preset], "base_batch": BASE_BATCH[preset],
                 "warmup_frac": WARMUP_FRAC, "margin_pp": MARGIN_PP,
                 "b_max_factor": B_MAX_FACTOR, "bn_group": BN_GROUP,
                 "min_scored_steps": harness.MIN_SCORED_STEPS},
        decide=[cells, keeps, decide_linear_scaling, decide_lars_extends, b_max_prediction,
                decide_b_max])
    return harness.Registered(spec, lambda rows: plan(preset, rows), to_row,
                              (SELECTION_SEED,))


def read_exp5(out: Path) -> dict[str, Any] | None:
    p = out.parent / "gradient_noise_scale" / "summary.json"
    return json.loads(p.read_text()) if p.exists() else None


# ------------------------------------------------------------------ report


def cell_table(rows: Sequence[Mapping[str, Any]], b0: int) -> str:
    """Per cell: selection grid, chosen lr, steps, evaluation accuracy and the paired
    difference to the base batch."""
    lines = ["| method | batch | steps | selection seed: base lr -> accuracy | chosen base lr "
             "(peak) | evaluation accuracy % | minus B0 (points) | status |",
             "| :-- | --: | --: | :-- | :-- | :-- | :-- | :-- |"]
    for opt, name in OPTIMIZERS.items():
        cs, st = cells(rows, opt), keeps(rows, opt, b0)
        for b, c in cs.items():
            iv = ev.interval(list(c["seeds"].values()))
            grid = ", ".join(f"{lr:.3g}: {harness.fmt_acc(a)}" for lr, a in sorted(
                c["scores"].items()))
            best = c["best_lr"]
            lines.append(
                f"| {name} | {b} | {c['steps']} | {grid} | "
                + (f"{best:.3g} ({best * b / b0:.3g})" if best else "-")
                + ("" if not c["edge"] else f" **{c['edge']} edge**" if len(c["scores"])
                   >= len(LR_FACTORS["cpu"]) else " (selection grid unfinished)")
                + f" | {iv.fmt(scale=100)} | "
                + (st[b][1].fmt(scale=100) if b in st else "base") + " | "
                + (st[b][0] if b in st else "-") + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(out: Path, rows: Sequence[Mapping[str, Any]], b0: int) -> Path:
    lines = []
    for opt, name in OPTIMIZERS.items():
        xs, ys = [], []
        for b, c in cells(rows, opt).items():
            for a in c["seeds"].values():
                xs.append(b)
                ys.append(100 * a)
        lines.append({"x": xs, "y": ys, "ls": "", "marker": "o", "label": f"{name} (each "
                      "evaluation seed)", "alpha": 0.7})
    base = cells(rows, "sgd").get(b0, {}).get("seeds", {})
    hl = {}
    if base:
        m = 100 * float(np.mean(list(base.values())))
        hl = {"SGD base": m, f"base - {MARGIN_PP:g} pt": m - MARGIN_PP}
    return harness.plot_styled(out / "accuracy_vs_batch.png", lines, xlabel="batch size",
                               ylabel="final test accuracy (%)", logx=True, hlines=hl,
                               title=f"Linear scaling + warmup, {EPOCHS['cpu']:g} epochs; "
                                     f"budget-bound beyond {b0 * CLAIM_FACTOR}")


def plot_base_loss(out: Path, rows: Sequence[Mapping[str, Any]], b0: int) -> Path | None:
    lines = [{"x": [p[0] for p in r["loss_curve"]], "y": [p[1] for p in r["loss_curve"]],
              "label": f"{OPTIMIZERS[r['optimizer']]}, seed {r['seed']}", "lw": 1.0}
             for r in rows if int(r["batch_size"]) == b0 and r.get("scored")
             and r.get("loss_curve")]
    if not lines:
        return None
    return harness.plot_styled(out / "base_loss.png", lines, xlabel="step",
                               ylabel="training loss", logy=True,
                               title=f"Base batch B0={b0}: training loss (has it flattened?)")


def setup_text(base: TrainConfig, b0: int) -> str:
    return (
        f"{base.model} (BN-MLP, ghost BatchNorm over {base.bn_ghost_size} examples at every "
        f"batch) on all of {base.dataset}, {base.epochs:g} epochs (E = "
        f"{base.epochs * base.num_train_examples():.0f} examples) at every batch, cosine "
        f"decay after a gradual warmup over {100 * WARMUP_FRAC:g}% of the budget from the "
        f"unscaled lr (Goyal's); lr = base lr x B/{b0}; momentum 0.9, weight decay 5e-4, "
        f"LARS trust coefficient 0.001. Batches: SGD {BATCHES['cpu']['sgd']}, LARS "
        f"{BATCHES['cpu']['lars']} (priority order). The claim's range (B0, 32 B0] = "
        f"(16, 512] lies below this task's B_crit (v2: 2.5k-4k; v3: experiment 5), as "
        f"Goyal's 256-8k lies below ImageNet's: 512 gets 234 steps; 1024 and 2048 get 117 "
        f"and 58 (budget-bound: they serve only the B_max test). Selection seed "
        f"{SELECTION_SEED}, base-lr grid {{0.5, 1, 2}} x the linear rule's prediction (SGD "
        f"{LR_CENTRE['sgd']}, LARS {LR_CENTRE['lars']} at B0), extended by 2x steps while "
        f"on an edge, within 4x; evaluation seeds {list(EVAL_SEEDS['cpu'])} at the chosen "
        f"lr (a seed fixes initialisation and data order: paired differences).")


def mapping_text(exp5: Mapping[str, Any] | None, b0: int) -> str:
    """How Goyal's range maps onto this task's critical batch (experiment 5)."""
    fits = (exp5 or {}).get("fits") or {}
    if not fits:
        return "Experiment 5's summary is missing: the range cannot be mapped onto B_crit."
    parts = [f"{100 * float(k):g}%: {f['b_crit']:.0f} [{f['b_crit_lo']:.0f}, "
             f"{f['b_crit_hi']:.0f}] ({f.get('status')})" for k, f in sorted(fits.items())]
    top = b0 * CLAIM_FACTOR
    bc = min(f["b_crit"] for f in fits.values() if f["b_crit"] == f["b_crit"])
    return (f"Experiment 5 (v3, criterion_sha `{str(exp5.get('criterion_sha'))[:12]}`) puts "
            f"this task's B_crit at the target test errors at " + "; ".join(parts)
            + f". The claim's top batch {top} is about B_crit/{bc / top:.1f} of the smallest "
            f"of these: Goyal's 256 to 8k ends about at ImageNet's B_crit, so this range is "
            f"the more conservative reading of the claim.")


def flattening_text(rows: Sequence[Mapping[str, Any]], b0: int) -> str:
    """Rule 1's second condition: how much the base batch's training loss still falls
    (mean of the logged losses over the third quarter of the run vs the last quarter)."""
    q3, q4 = [], []
    for r in rows:
        if int(r["batch_size"]) != b0 or not r.get("scored") or not r.get("loss_curve"):
            continue
        n = int(r["total_steps"])
        q3 += [y for x, y in r["loss_curve"] if n / 2 <= x < 3 * n / 4]
        q4 += [y for x, y in r["loss_curve"] if x >= 3 * n / 4]
    if not q3 or not q4:
        return ""
    a, b = float(np.mean(q3)), float(np.mean(q4))
    how = ("still falling slowly, so rule 1's 'flattened' holds only approximately"
           if b >= 0.9 * a else "still falling clearly, so rule 1's 'flattened' does not hold")
    return (f"The base batch's training loss (evaluation seeds, both optimizers; logged "
            f"single-batch samples) averages {a:.3f} over the third quarter of the run and "
            f"{b:.3f} over the last ({100 * (b - a) / a:+.0f}%): it is {how} at this budget "
            f"(curve: base_loss.png, in the Cells section). ")


def limits_text() -> str:
    return (
        "A 2-layer BN-MLP on Fashion-MNIST for 2 epochs, on a shared 2-core CPU: ImageNet "
        "ResNet-50 behaviour (Goyal's 90 epochs, BN over 32 per worker) is not tested; the "
        "ResNet-8 arm is its own pre-registered experiment (`linear_scaling_resnet8`, with "
        "a range and budget scaled down to its CPU cost: its report). The budget (2 epochs) is "
        "what makes 512 the top of a range with 200+ steps; batches beyond it are "
        "budget-bound by construction. The selection grid has 3-4 points; the lr is "
        "selected on one seed. B_max's prediction combines the ends of B_crit's and "
        "E_min's intervals as if independent (they are not: E_min = S_min B_crit), and "
        "experiment 5 measured its targets at a constant lr while this budget uses a "
        "cosine schedule, so E_min transfers only approximately; the prediction uses the "
        "experiment-5 target nearest to the base error + 1 point, while the base batch "
        "itself ends below that error with the decaying schedule.")


def short_results(rows: Sequence[Mapping[str, Any]], b0: int, bmax: list[str]) -> dict[str, str]:
    """One line per verdict for the README table (points, 95% intervals)."""
    def iv(d: ev.Interval) -> str:
        return f"{100 * d.mean:+.2f} [{100 * d.lo:+.2f}, {100 * d.hi:+.2f}]"

    st = keeps(rows, "sgd", b0)
    ls_txt = f"SGD, acc(B) - acc({b0}), points: " + "; ".join(
        f"B={b}: {iv(s[1])} {s[0]}" for b, s in sorted(st.items()))
    cs, cl = cells(rows, "sgd"), cells(rows, "lars")
    lars_txt = "LARS - SGD, points: " + "; ".join(
        f"B={b}: {iv(ev.paired(cl[b]['seeds'], cs[b]['seeds']))}"
        for b in sorted(set(cs) & set(cl)) if b > b0) + (
        "" if any(x[0] == "fails" for x in st.values()) else " (SGD fails at no scored batch)")
    return {"linear_scaling": ls_txt, "lars_extends": lars_txt,
            "b_max": " ".join(x.lstrip("- ") for x in bmax)}


def analyse(preset: str, run: harness.ExperimentRun) -> dict:
    from lars_jax.runs.report import Section, write_report

    rows, out, b0 = run.rows, run.out, BASE_BATCH[preset]
    exp5 = read_exp5(out)
    budget = EPOCHS[preset] * run.base.num_train_examples()
    v = {"linear_scaling": LINEAR_SCALING(rows), "lars_extends": LARS_EXTENDS(rows),
         "b_max": decide_b_max(rows, exp5, b0, budget)}
    crit = harness.read_criterion(out)
    images = [p for p in (plot_accuracy(out, rows, b0), plot_base_loss(out, rows, b0)) if p]
    bmax_txt = "\n".join([f"**Claim.** {B_MAX.claim}", "", f"**Criterion.** {B_MAX.rule}",
                          "", f"**Verdict: {v['b_max'][0]}.**", "", *v["b_max"][1]])
    verdicts = "\n\n".join(["### Linear scaling + warmup (SGD)\n\n"
                             + LINEAR_SCALING.section(rows),
                             "### LARS extends the range\n\n" + LARS_EXTENDS.section(rows),
                             "### Joint prediction B_max (McCandlish x Goyal)\n\n" + bmax_txt])
    write_report(
        out, title="Linear scaling + warmup (Goyal et al.) with LARS, and B_max",
        intro="Design v3 (issue 23). Raw rows: `rows.jsonl` (one per run, with its sha).",
        sections=[Section("Setup", setup_text(run.base, b0) + "\n\n" + mapping_text(exp5, b0)),
                  Section("Pre-registration", harness.registered_note(out, rows)),
                  Section("Verdicts", verdicts),
                  Section("Cells", cell_table(rows, b0), images),
                  Section("Limits of the evidence", flattening_text(rows, b0) + limits_text()),
                  Section("Compute", harness.compute_note(rows, out))])
    short = short_results(rows, b0, v["b_max"][1])
    table = [{"claim": c.claim, "criterion": c.rule, "verdict": v[k][0], "result": short[k]}
             for k, c in (("linear_scaling", LINEAR_SCALING), ("lars_extends", LARS_EXTENDS),
                          ("b_max", B_MAX))]
    summary = {"preset": preset, "design": "v3", "criterion_sha": crit["criterion_sha"],
               "fixed_at": crit["fixed_at"], "table": table,
               "verdicts": {k: {"verdict": x[0], "details": x[1]} for k, x in v.items()},
               "exp5_criterion_sha": (exp5 or {}).get("criterion_sha"),
               "headline": "; ".join(f"{k}: {x[0]}" for k, x in v.items())}
    harness.save_json(summary, out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return harness.experiment_main(NAME, __doc__, base_config, registered, analyse, argv)


if __name__ == "__main__":
    main()
