"""Cost of ``lars-jax advise``'s measuring step relative to a plain train step.

``advise`` runs the trainer's own step (`lars_jax.train.build(config, data,
noise_scale=True)`) with every example's gradient norm computed in the same backward pass
(`lars_jax.value_grad_and_norms`) and the one-batch noise-scale estimates added to the
metrics. This script builds the same config twice (``noise_scale`` off and on) and times
the compiled steps interleaved round by round (`_harness.compare`), so that the load of a
shared machine hits both alike. Target: ratio <= 1.1. (BatchNorm models use the two-batch
estimator from the step's micro-batches, which the plain step already computes: no extra
cost there.)

Usage:
  .venv/bin/python benchmarks/bench_advise_step.py [--models mlp2 resnet20] [--batch 128]
      [--rounds 5] [--conv-direct offsets grouped]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _harness  # noqa: E402


def _stepper(run: Any, conv_direct: str | None = None) -> Any:
    """A zero-argument call running one more step (the state is donated, so it is kept).

    ``conv_direct`` sets ``lars_jax.per_example._CONV_DIRECT`` (how "direct" conv layers
    form per-example kernel gradients) while the step is traced, at its first call.
    """
    from lars_jax import per_example

    holder = {"state": run.place(run.state), "step": 0}
    default = per_example._CONV_DIRECT

    def call():
        per_example._CONV_DIRECT = conv_direct or default
        holder["state"], metrics = run.train_step(holder["state"], run.images, run.labels,
                                                  np.int32(holder["step"]))
        holder["step"] += 1
        per_example._CONV_DIRECT = default
        return metrics

    return call


def main(argv: list[str] | None = None) -> None:
    from lars_jax.train import TrainConfig
    from lars_jax.train.build import build

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp2", "resnet20"])
    p.add_argument("--norm", default="group", help="resnets' norm (mlps: none)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--conv-direct", nargs="+", default=[None],
                   help="advise variants by how 'direct' conv layers form per-example kernel "
                   "gradients: grouped, offsets (default: the library's)")
    args = p.parse_args(argv)
    data = _harness.synthetic_data((28, 28, 1), 4096, 64)
    rows = []
    for model in args.models:
        norm = "none" if model.startswith("mlp") else args.norm
        config = TrainConfig(model=model, norm=norm, batch_size=args.batch, num_devices=1,
                             epochs=1, progress=False, checkpoint_every_steps=-1, plot=False)
        variants = {"train": _stepper(build(config, data))}
        for impl in args.conv_direct:
            name = "advise" if impl is None else f"advise[{impl}]"
            variants[name] = _stepper(build(config, data, noise_scale=True), impl)
        res = _harness.compare(variants, rounds=args.rounds, calls_per_round=5)
        for name, r in res.items():
            rows.append({"model": model, "norm": norm, "batch": args.batch, "variant": name,
                         "median_ms": 1e3 * r["median_s"], "ratio": r["ratio_to_train"]})
    print(f"load average before/after: {os.getloadavg()}")
    _harness.print_table(rows)
    _harness.write_results("advise_step", rows, load_average=os.getloadavg())


if __name__ == "__main__":
    main()
