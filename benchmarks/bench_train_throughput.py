"""Training throughput of the lars_jax trainer: images/s (and GFLOP/s, MFU on GPU).

Times the real compiled train step of `lars_jax.train` (batch selection from an on-device
uint8 data set, normalisation, forward, backward, optimizer update, metrics; no
augmentation) for ResNet-20 / ResNet-18 (and ResNet-50 on GPU) at several global batch
sizes, float32 and bfloat16 compute, SGD / LARS / CLARS, and the jit (Mesh + shard_map)
path against the pmap path. Variants of one group are timed interleaved (`_harness.compare`)
so that background load hits them alike; compare ratios within a group.

GFLOP/s counts 6 x forward MACs per example (forward 2 FLOPs per MAC, backward twice the
forward) from `lars_jax.models.count_macs`; MFU divides it by the device's peak dense rate
(GPU only; the table of peaks is below).

Usage:
  python benchmarks/bench_train_throughput.py            # CPU preset (small grid)
  python benchmarks/bench_train_throughput.py --preset gpu

References:
  Chowdhery et al., "PaLM", 2022 (arXiv 2204.02311), appendix B: model FLOPs utilization.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "--devices" in sys.argv:  # simulated CPU devices must be set before JAX starts
    _n = sys.argv[sys.argv.index("--devices") + 1]
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_n}")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _harness import (  # noqa: E402
    compare,
    machine_info,
    print_table,
    synthetic_data,
    write_results,
)

from lars_jax.models import count_macs  # noqa: E402
from lars_jax.train import TrainConfig, build  # noqa: E402

# Peak dense rates (FLOP/s) by GPU name substring and dtype, from the vendors' data sheets.
GPU_PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}

SHAPES = {"resnet20": (28, 28, 1), "resnet18": (32, 32, 3), "resnet50": (224, 224, 3)}


def make_variant(model: str, batch: int, dtype: str, optimizer: str, parallel: str,
                 num_devices: int, pool: int = 4096):
    """A zero-argument callable running one train step (state carried between calls)."""
    cfg = TrainConfig(model=model, batch_size=batch, dtype=dtype, optimizer=optimizer,
                      parallel=parallel, num_devices=num_devices,
                      clars_granularity="example", crop_padding=0, flip=False)
    cfg.validate(device_count=num_devices)
    run_ = build(cfg, synthetic_data(SHAPES[model], max(pool, batch), num_devices))
    holder = [run_.place(run_.state)]
    def run():
        holder[0], metrics = run_.train_step(holder[0], run_.images, run_.labels, np.int32(0))
        return metrics["loss"]

    return run



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["cpu", "gpu"], default=None)
    ap.add_argument("--devices", type=int, default=None,
                    help="simulated CPU devices (sets XLA_FLAGS; CPU only)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    gpu = jax.default_backend() == "gpu"
    preset = args.preset or ("gpu" if gpu else "cpu")
    n = jax.device_count()
    if preset == "cpu":
        groups = {
            "resnet20 batch size x dtype (LARS, jit, 1 device)": [
                ("resnet20", b, d, "lars", "jit", 1)
                for b in (64, 256) for d in ("float32", "bfloat16")],
            "resnet20 optimizers (B=128 f32, jit, 1 device)": [
                ("resnet20", 128, "float32", o, "jit", 1) for o in ("sgd", "lars", "clars")],
            f"resnet20 jit vs pmap (B=128 f32, LARS, {n} devices)": [
                ("resnet20", 128, "float32", "lars", p, n) for p in ("jit", "pmap")],
            "resnet18 (B=32, LARS, jit, 1 device)": [
                ("resnet18", 32, d, "lars", "jit", 1) for d in ("float32", "bfloat16")],
        }
    else:
        groups = {
            "resnet20 batch size x dtype (LARS, jit)": [
                ("resnet20", b, d, "lars", "jit", n)
                for b in (256, 1024, 4096) for d in ("float32", "bfloat16")],
            "resnet18 batch size x dtype (LARS, jit)": [
                ("resnet18", b, d, "lars", "jit", n)
                for b in (256, 1024) for d in ("float32", "bfloat16")],
            "resnet18 optimizers (B=512 bf16, jit)": [
                ("resnet18", 512, "bfloat16", o, "jit", n) for o in ("sgd", "lars", "clars")],
            "resnet18 jit vs pmap (B=512 bf16, LARS)": [
                ("resnet18", 512, "bfloat16", "lars", p, n) for p in ("jit", "pmap")],
            "resnet50 (B=128 bf16, LARS, jit)": [("resnet50", 128, "bfloat16", "lars", "jit", n)],
        }
    gpu_name = machine_info().get("gpu") or ""
    peaks = next((v for k, v in GPU_PEAKS.items() if k in gpu_name), None)
    rows = []
    for title, specs in groups.items():
        print(f"\n## {title}", flush=True)
        variants = {"/".join(map(str, s)): make_variant(*s) for s in specs}
        res = compare(variants, rounds=args.rounds, calls_per_round=args.calls, warmup=1)
        for spec, (_name, r) in zip(specs, res.items(), strict=True):
            model, batch, dtype, opt, path, ndev = spec
            ips = batch / r["median_s"]
            macs = count_macs(model, SHAPES[model], 10)
            flops = 6 * macs * ips
            row = {"group": title, "model": model, "batch": batch, "dtype": dtype,
                   "optimizer": opt, "path": path, "devices": ndev,
                   "step_ms": 1e3 * r["median_s"], "images_per_s": ips,
                   "gflop_per_s": flops / 1e9,
                   "ratio": next(v for k, v in r.items() if k.startswith("ratio_to_"))}
            if gpu and peaks:
                row["mfu"] = flops / (peaks[dtype] * ndev)
            rows.append(row)
        print_table([r for r in rows if r["group"] == title],
                    ["model", "batch", "dtype", "optimizer", "path", "devices", "step_ms",
                     "images_per_s", "gflop_per_s", "ratio"] + (["mfu"] if gpu else []))
    if not args.no_write:
        write_results("train_throughput", rows, preset=preset, command=" ".join(sys.argv))


if __name__ == "__main__":
    main()
