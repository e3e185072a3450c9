"""Scaling of the trainer's data-parallel paths over 1, 2, 4 and 8 (simulated) devices.

On this CPU the devices are simulated (`--xla_force_host_platform_device_count=8`): all of
them share the same cores, so this is a check of the *overheads* of partitioning, the
gradient all-reduce (`lax.pmean`) and the BatchNorm statistics sync, not a speed claim.

Strong scaling (default): the global batch is fixed; every device count does the same total
work on the same cores, so the ideal is a constant images/s. Weak scaling (`--mode weak`):
the per-device batch is fixed, so the work grows with N; on shared cores the ideal is again
a constant images/s. In both modes `ips_vs_1_device` (images/s relative to the smallest
device count, same path) measures what the extra devices cost; on real devices it is the
(weak-)scaling speedup, ideally N.

Each step is the trainer's real compiled step, from `lars_jax.train.build`: `make_train_step`
(forward, backward, gradient pmean, LARS update from the trainer's `make_optimizer`,
finiteness guard, metrics) wrapped by `lars_jax.train.parallel.jit_train_step`
(Mesh + `jax.shard_map` under `jax.jit`) or `pmap_train_step` (`jax.pmap`), with batch
selection and normalisation from an on-device uint8 pool (no augmentation). All variants
(paths x device counts) are timed interleaved in one run (`_harness.compare`).

On a machine with several real accelerators, run the same script without the simulated
devices (`--real`) to get real weak-scaling efficiency.

Usage:
  python benchmarks/bench_scaling.py                     # resnet20, global batch 64, strong
  python benchmarks/bench_scaling.py --mode weak --batch 16
  python benchmarks/bench_scaling.py --quick             # smoke settings
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if "--real" not in sys.argv:  # simulated CPU devices: must be set before JAX starts
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in _flags:
        os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

import argparse  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _harness import compare, print_table, synthetic_data, write_results  # noqa: E402

from lars_jax.train import TrainConfig, build  # noqa: E402

SHAPES = {"resnet8": (28, 28, 1), "resnet20": (28, 28, 1), "resnet18": (32, 32, 3)}


def make_variant(cfg: TrainConfig, num_devices: int, path: str, shape: tuple[int, ...],
                 pool: int = 1024) -> Any:
    """A zero-argument callable running one trainer step on `num_devices` via `path`."""
    cfg = cfg.replace(parallel=path, num_devices=num_devices)
    cfg.validate(device_count=num_devices)
    run_ = build(cfg, synthetic_data(shape, max(pool, cfg.batch_size), num_devices))
    holder = [run_.place(run_.state)]

    def run() -> Any:
        holder[0], metrics = run_.train_step(holder[0], run_.images, run_.labels, np.int32(0))
        return metrics["loss"]

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="jit vs pmap over 1..8 devices")
    parser.add_argument("--model", default="resnet20", choices=sorted(SHAPES))
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64,
                        help="global batch (strong) or per-device batch (weak)")
    parser.add_argument("--mode", choices=("strong", "weak"), default="strong")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--paths", default="jit,pmap")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="use the real devices")
    parser.add_argument("--quick", action="store_true",
                        help="smoke settings: resnet8 width 0.25, batch 16, 1,2 devices")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.width, args.batch, args.devices = "resnet8", 0.25, 16, "1,2"
        args.rounds, args.calls, args.warmup = 1, 2, 1
    counts = [int(n) for n in args.devices.split(",")]
    if max(counts) > jax.device_count():
        raise ValueError(f"--devices {args.devices}: only {jax.device_count()} devices")
    paths = args.paths.split(",")
    shape = SHAPES[args.model]
    base = TrainConfig(model=args.model, width=args.width, crop_padding=0, flip=False)

    variants, meta = {}, {}
    for n in counts:
        gb = args.batch if args.mode == "strong" else args.batch * n
        if gb % n:
            raise ValueError(f"--batch {args.batch} is not divisible by {n} devices")
        for path in paths:
            name = f"{path} x{n}"
            variants[name] = make_variant(base.replace(batch_size=gb), n, path, shape)
            meta[name] = (path, n, gb)
    first = next(iter(variants))
    res = compare(variants, baseline=first, warmup=args.warmup, rounds=args.rounds,
                  calls_per_round=args.calls)
    rows = []
    for name, r in res.items():
        path, n, gb = meta[name]
        ref = f"{path} x{counts[0]}"
        ref_ips = meta[ref][2] / res[ref]["median_s"] if ref in res else None
        jit_same_n = res.get(f"jit x{n}", {}).get("median_s")
        row = {
            "path": path,
            "devices": n,
            "global_batch": gb,
            "ms_per_step": 1e3 * r["median_s"],
            "steps_per_s": 1 / r["median_s"],
            "images_per_s": gb / r["median_s"],
            "ips_vs_1_device": (gb / r["median_s"]) / ref_ips if ref_ips else None,
            "pmap_vs_jit": (jit_same_n / r["median_s"]) if jit_same_n else None,
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["path"], r["devices"]))
    cols = ["path", "devices", "global_batch", "ms_per_step", "steps_per_s", "images_per_s",
            "ips_vs_1_device", "pmap_vs_jit"]
    print_table(rows, cols)
    write_results("scaling", rows, mode=args.mode, model=args.model, width=args.width,
                  simulated_devices=not args.real, argv=sys.argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
