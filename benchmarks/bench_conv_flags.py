"""XLA:CPU flags and batch-split convolutions against PyTorch, interleaved across processes.

XLA flags act process-wide, so each flag setting needs its own process. This script runs
`bench_conv_leads.py` (one jitted ResNet train step per variant, the PyTorch twin timed in
the same process as the yardstick) once per flag setting and round, the settings in a
rotated order in each round, so that a slow minute of the machine does not fall on one
setting only. Each process reports its variants' step times and their ratio to PyTorch eager
measured beside them; the table gives, per setting and variant, the median over rounds of
that ratio (higher is faster than PyTorch) and of the step time, plus the largest relative
parameter difference from `xla float32` after one step in the same process (same weights,
same batch: a split that changes results shows here) and the largest relative difference of
`xla float32`'s parameters after one step from those of the first process (a flag that
changes results shows here).

Settings:
  default   no extra flag
  onednn    --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true
  xnnpack   --xla_cpu_experimental_xnn_fusion_type=individual_convolution

Usage (needs torch: `pip install -e ".[bench]"`):
  python benchmarks/bench_conv_flags.py                       # ResNet-20, B=64, 2 rounds
  python benchmarks/bench_conv_flags.py --rounds 1 --quick    # smoke settings
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _harness import print_table, write_results  # noqa: E402

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--variants", default="xla,split2,split4")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rounds", type=int, default=2, help="processes per setting")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time torch.compile (in the default setting's processes)")
    p.add_argument("--quick", action="store_true", help="bench_conv_leads --quick settings")
    args = p.parse_args(argv)
    names = args.settings.split(",")
    for name in names:
        if name not in SETTINGS:
            raise SystemExit(f"--settings: unknown {name!r}; known {', '.join(SETTINGS)}")
    base_flags = os.environ.get("XLA_FLAGS", "")
    per: dict[tuple[str, str], list[dict]] = {}
    reference = None  # xla float32 parameters after one step in the first process
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = Path(tmp) / f"{name}_{r}.json"
                cmd = [sys.executable, str(_HERE / "bench_conv_leads.py"), "--variants",
                       args.variants, "--dtypes", args.dtypes, "--no-write", "--out", str(out)]
                cmd += ["--quick"] if args.quick else ["--rounds", "3", "--calls", "2"]
                if args.torch_compile and name == "default":
                    cmd.append("--torch-compile")
                env = {**os.environ, "XLA_FLAGS": f"{base_flags} {SETTINGS[name]}".strip()}
                print(f"round {r}, {name}: {' '.join(cmd[1:])}", flush=True)
                subprocess.run(cmd, env=env, check=True)
                params = np.load(out.with_suffix(".npz"))
                params = [params[k] for k in sorted(params.files, key=lambda k: int(k[4:]))]
                reference = reference if reference is not None else params
                across = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
                             for a, b in zip(params, reference, strict=True))
                for row in json.loads(out.read_text())["rows"]:
                    per.setdefault((name, row["variant"]), []).append(
                        {**row, "load_1min": os.getloadavg()[0], "across": across})
    rows = []
    for (name, variant), runs in per.items():
        ratios = [x["vs_pytorch_eager"] for x in runs if x["vs_pytorch_eager"] is not None]
        diffs = [x["param_max_rel_diff"] for x in runs if x["param_max_rel_diff"] is not None]
        rows.append({
            "setting": name, "variant": variant,
            "ms_per_step": statistics.median(x["ms_per_step"] for x in runs),
            "vs_pytorch_eager": statistics.median(ratios) if ratios else None,
            "vs_pytorch_eager_per_round": ratios,
            "param_max_rel_diff": max(diffs) if diffs else None,
            "xla_f32_params_vs_first_process": max(x["across"] for x in runs),
            "load_1min_max": max(x["load_1min"] for x in runs),
            "rounds": len(runs)})
    print_table(rows)
    write_results("conv_flags", rows, argv=sys.argv[1:], load_average=os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
