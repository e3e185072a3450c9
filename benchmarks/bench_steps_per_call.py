"""Steps per compiled call: the trainer's throughput with `steps_per_call` 1 vs K.

`TrainConfig.steps_per_call = K` runs K optimizer steps in one compiled call
(`jax.lax.scan`), so the host dispatches once per K steps. This matters when one step is as
short as a dispatch: small models at small batches (here the MLP of the CPU experiments at
batch 32), or fast accelerators. Each variant is a whole `lars_jax.train.train` run (same
data, same steps, same logging every `--log-every` steps), repeated `--rounds` times,
interleaved round by round; the table gives the median training throughput the trainer
reports (compilation excluded) and the median wall time of the run.

Usage:
  python benchmarks/bench_steps_per_call.py                     # mlp2, batch 32, K = 1, 10, 50
  python benchmarks/bench_steps_per_call.py --model resnet8 --width 0.25 --batch 32 --k 1 10
  python benchmarks/bench_steps_per_call.py --quick             # smoke settings
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import print_table, write_results  # noqa: E402

from lars_jax.train import TrainConfig, train  # noqa: E402
from lars_jax.train.build import load_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp2")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 50])
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
    samples: dict[int, list[dict]] = {k: [] for k in args.k}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0 warms the compilation caches
            for k in args.k:
                s = train(TrainConfig(**base, steps_per_call=k, workdir=f"{tmp}/k{k}_{r}"),
                          data=data)
                if r:
                    samples[k].append(s)
    k0 = args.k[0]
    ips0 = statistics.median(s["images_per_s"] for s in samples[k0])
    rows = []
    for k, ss in samples.items():
        ips = statistics.median(s["images_per_s"] for s in ss)
        rows.append({"model": args.model, "batch": args.batch, "steps_per_call": k,
                     "images_per_s": ips, f"vs_k{k0}": ips / ips0,
                     "run_wall_s": statistics.median(s["wall_time_s"] for s in ss),
                     "test_accuracy": statistics.median(s["test_accuracy"] for s in ss),
                     "rounds": len(ss)})
    print_table(rows)
    write_results("steps_per_call", rows, argv=sys.argv[1:], config=base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
