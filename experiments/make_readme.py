"""Writes experiments/README.md from the committed results (each run's summary.json).

Usage:
  python experiments/make_readme.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HERE = Path(__file__).resolve().parent

EXPERIMENTS = [
    ("linear_scaling_warmup",
     "Goyal et al. 2017 / seed 004: linear lr scaling + gradual warmup keep accuracy flat up "
     "to large batches at a fixed epoch budget; LARS and CLARS extend the range."),
    ("clars_no_warmup",
     "Huo et al. 2020: CLARS without warmup matches or beats LARS with warmup at large "
     "batch sizes."),
    ("page_weight_decay",
     "Page (seed 001): weight-decay shrink and gradient growth of |w|^2 balance; "
     "lr|g|/|w| ~ sqrt(2 lr wd (1-rho)) (SGD acts like LARS); sqrt(n) lr rule for "
     "noise-dominated layers; g_t and v_(t-1) nearly uncorrelated."),
    ("small_batch",
     "Masters & Luschi 2018 (seed 002): best accuracy at small batches (2-32), the stable "
     "range of the base lr eta/B shrinks as B grows; with and without BN."),
    ("gradient_noise_scale",
     "McCandlish et al. 2018: the gradient noise scale B_simple, measured with the two-batch "
     "estimator, predicts the critical batch size."),
]


def main() -> Path:
    lines = [
        "# Experiments: testing the published claims",
        "",
        "One script per claim. Each writes `results/<name>/` with `report.md` (setup, table, "
        "verdict, limits), PNG plots, `rows.jsonl` (one row per run) and `runs/` (the "
        "trainer's `metrics.jsonl`, `summary.json`, `config.json` per run). Presets: `cpu` "
        "(under 20 minutes each on a 2-core CPU: Fashion-MNIST, a two-hidden-layer MLP with "
        "BatchNorm for the large grids, a 4-channel ResNet-8 for Page's conv-layer analysis; "
        "what is committed here; each report gives its run time), `full` (GPU budgets, "
        "CIFAR-10; defined but not run in this repository), "
        "`smoke` (seconds, for the tests). Scripts resume interrupted sweeps; "
        "`--max-minutes` stops starting new runs, `--report-only` rebuilds the report.",
        "",
        "The verdicts below are copied from the committed `results/<name>/summary.json` by "
        "`python experiments/make_readme.py`; the numbers come from the cpu runs and say "
        "little about ImageNet-scale behaviour (see each report's limits section).",
        "",
    ]
    for i, (name, claim) in enumerate(EXPERIMENTS, 1):
        summary = HERE / "results" / name / "summary.json"
        lines.append(f"## {i}. `{name}`")
        lines.append("")
        lines.append(f"**Claim.** {claim}")
        lines.append("")
        lines.append(f"**Command.** `python experiments/{name}.py --preset cpu` "
                     f"(GPU: `--preset full`)")
        lines.append("")
        if summary.exists():
            s = json.loads(summary.read_text())
            lines.append(f"**Verdict (preset {s.get('preset', '?')}).** "
                         f"{s.get('headline', 'see the report')}")
            lines.append("")
            lines.append(f"Report: [results/{name}/report.md](results/{name}/report.md)")
        else:
            lines.append("**Verdict.** Not run yet: no committed results.")
        lines.append("")
    out = HERE / "README.md"
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":
    print(main())
