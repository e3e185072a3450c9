"""Steps per compiled call and gradient accumulation: the trainer's throughput per variant.

`TrainConfig.steps_per_call = K` runs K optimizer steps in one compiled call
(`jax.lax.scan`), so the host dispatches once per K steps. This matters when one step is as
short as a dispatch: small models at small batches (here the MLP of the CPU experiments at
batch 32), or fast accelerators. `TrainConfig.grad_accum_steps = A` splits each step's batch
into A micro-batches (another `lax.scan`). For convolutional models on the CPU both loops
compile unrolled (`lars_jax.train.step.unroll_loops`), and every variant should run at the
single-step rate. Each variant (A, K) is a whole `lars_jax.train.train` run (same data,
same steps, same logging every `--log-every` steps), repeated `--rounds` times,
interleaved round by round, with JAX's persistent compilation cache in a fresh folder;
the table gives the median training throughput the trainer reports (compilation
excluded), the median wall time of the run and the compile time of round 0 (cold cache).

Usage:
  python benchmarks/bench_steps_per_call.py                     # mlp2, batch 32, K = 1, 10, 50
  python benchmarks/bench_steps_per_call.py --model resnet8 --width 0.25 --batch 32 --k 1 10
  python benchmarks/bench_steps_per_call.py --model resnet20 --batch 64 --train-subset 1280 \
      --accum 1 2 4 --k 1 4 --log-every 20                     # issue 22: (A, K) grid
  python benchmarks/bench_steps_per_call.py --quick             # smoke settings
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import print_table, write_results  # noqa: E402

from lars_jax.runs.compile_cache import enable_compilation_cache  # noqa: E402
from lars_jax.train import TrainConfig, train  # noqa: E402
from lars_jax.train.build import load_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp2")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--accum", type=int, nargs="+", default=[1],
                   help="grad_accum_steps values (variants: every accum with every k)")
    p.add_argument("--extra", nargs="*", default=[],
                   help="more variants as ACCUM:K (e.g. 1:8 for the compile time of K=8)")
    p.add_argument("--train-subset", type=int, default=16000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.rounds, args.k, args.log_every = 640, 1, [1, 5], 10
    base = dict(model=args.model, width=args.width, dataset="fashion_mnist",
                train_subset=args.train_subset, test_subset=1000, batch_size=args.batch,
                epochs=args.epochs, optimizer="lars", dtype="float32", num_devices=1,
                crop_padding=0, flip=False, log_every_steps=args.log_every,
                checkpoint_every_steps=-1, plot=False, progress=False, resume=False)
    data = load_data(TrainConfig(**base))
    variants = list(itertools.product(args.accum, args.k))
    variants += [tuple(int(v) for v in e.split(":")) for e in args.extra]
    samples: dict[tuple[int, int], list[dict]] = {v: [] for v in variants}
    compile_s: dict[tuple[int, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        enable_compilation_cache(f"{tmp}/xla_cache")
        for r in range(args.rounds + 1):  # round 0 compiles (cold cache) and warms it
            for a, k in variants:
                s = train(TrainConfig(**base, grad_accum_steps=a, steps_per_call=k,
                                      workdir=f"{tmp}/a{a}_k{k}_{r}"), data=data)
                if r:
                    samples[(a, k)].append(s)
                else:
                    compile_s[(a, k)] = s["compile_time_s"]
    ips0 = statistics.median(s["images_per_s"] for s in samples[variants[0]])
    rows = []
    for (a, k), ss in samples.items():
        ips = statistics.median(s["images_per_s"] for s in ss)
        rows.append({"model": args.model, "batch": args.batch, "grad_accum_steps": a,
                     "steps_per_call": k, "images_per_s": ips,
                     f"vs_a{variants[0][0]}_k{variants[0][1]}": ips / ips0,
                     "compile_s_cold": compile_s[(a, k)],
                     "run_wall_s": statistics.median(s["wall_time_s"] for s in ss),
                     "test_accuracy": statistics.median(s["test_accuracy"] for s in ss),
                     "rounds": len(ss)})
    print_table(rows)
    write_results("steps_per_call", rows, argv=sys.argv[1:], config=base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
