"""CLARS train step (one-pass per-example norms) versus LARS, and versus the vmap(grad) path.

Three jitted train steps on ResNet-20 (CIFAR shape, 32x32x3, BatchNorm by default), timed
interleaved by `_harness.compare` so that background load hits all of them alike:

* ``lars``:  ``jax.value_and_grad`` + ``lars_jax.lars`` update (the baseline, ratio 1.0);
* ``clars``: ``lars_jax.value_grad_and_norms`` (loss, gradient and per-example norms in one
  forward and one backward pass) + ``lars_jax.clars`` update;
* ``clars_unfused`` (with ``--unfused``): ``clars`` with the kernel gradients of the layers
  whose per-example gradients are formed ("direct") computed again by autodiff instead of
  summed from the per-example gradients (the implementation's ``_FUSE_DIRECT = False``);
* ``clars_groups``: the same in micro-batch mode (``num_groups=8``, e.g. one group per device);
* ``clars_vmap``: ``jax.value_and_grad`` + ``per_example_norms_vmap`` (``vmap(grad)``, B
  gradients materialised) + ``lars_jax.clars`` update. With BatchNorm, vmap normalises each
  example alone: a different quantity, timed only for cost. Skipped above ``--vmap-max-batch``.

Peak memory is XLA's compiled estimate (``memory_analysis()``: temporaries + arguments +
outputs) of each step; the process's peak RSS is printed too.

Usage:
  .venv/bin/python benchmarks/bench_per_example_norms.py [--batch 128 512] [--norm batch]
      [--rounds 3] [--calls 1] [--vmap-max-batch 512] [--unfused]
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path
from typing import Any

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import compare, machine_info, print_table, write_results  # noqa: E402

import lars_jax  # noqa: E402
from lars_jax import per_example  # noqa: E402
from lars_jax.models import create_model  # noqa: E402


def _steps(model: Any, variables: dict, num_groups: int) -> dict[str, Any]:
    stats = variables.get("batch_stats", {})
    has_bn = bool(stats)

    def loss_fn(params, x, y):
        v = {"params": params, "batch_stats": stats} if has_bn else {"params": params}
        if has_bn:
            logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        else:
            logits = model.apply(v, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def per_example_loss(params, xi, yi):
        return loss_fn(params, xi[None], yi[None])

    lars = lars_jax.lars(0.1, weight_decay=1e-4)
    clars = lars_jax.clars(0.1, weight_decay=1e-4)

    def lars_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = lars.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    def clars_step(params, state, x, y):
        loss, grads, norms = lars_jax.value_grad_and_norms(loss_fn, params, x, y)
        updates, state = clars.update(grads, state, params, per_example_norms=norms)
        return optax.apply_updates(params, updates), state, loss

    def clars_groups_step(params, state, x, y):
        loss, grads, norms = lars_jax.value_grad_and_norms(
            loss_fn, params, x, y, num_groups=num_groups
        )
        updates, state = clars.update(grads, state, params, per_example_norms=norms)
        return optax.apply_updates(params, updates), state, loss

    def clars_vmap_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        norms = lars_jax.per_example_norms_vmap(per_example_loss, params, x, y)
        updates, state = clars.update(grads, state, params, per_example_norms=norms)
        return optax.apply_updates(params, updates), state, loss

    return {
        "lars": (lars_step, lars),
        "clars": (clars_step, clars),
        "clars_unfused": (clars_step, clars),
        "clars_groups": (clars_groups_step, clars),
        "clars_vmap": (clars_vmap_step, clars),
    }


def _peak_bytes(compiled: Any) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(
            m.temp_size_in_bytes
            + m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
        )
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for batch in args.batch:
        model = create_model(args.model, num_classes=10, norm=args.norm)
        kx, ky, kp = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (batch, 32, 32, 3))
        y = jax.random.randint(ky, (batch,), 0, 10)
        variables = model.init(kp, x[:2], train=False)
        params = variables["params"]
        variants, memory = {}, {}
        for name, (step, tx) in _steps(model, variables, args.num_groups).items():
            if name == "clars_vmap" and batch > args.vmap_max_batch:
                continue
            if name == "clars_unfused" and not args.unfused:
                continue
            state = tx.init(params)
            per_example._FUSE_DIRECT = name != "clars_unfused"
            try:
                compiled = jax.jit(step).lower(params, state, x, y).compile()
            finally:
                per_example._FUSE_DIRECT = True
            memory[name] = _peak_bytes(compiled)
            variants[name] = lambda c=compiled, s=state, p=params, x=x, y=y: c(p, s, x, y)[2]
        res = compare(
            variants, baseline="lars", warmup=1, rounds=args.rounds, calls_per_round=args.calls
        )
        for name, r in res.items():
            rows.append(
                {
                    "model": args.model,
                    "norm": args.norm,
                    "batch": batch,
                    "step": name,
                    "median_s": r["median_s"],
                    "ratio_to_lars": r["ratio_to_lars"],
                    "xla_peak_MiB": (memory[name] or 0) / 2**20,
                    "samples": r["samples"],
                }
            )
        if batch > args.vmap_max_batch:
            rows.append(
                {
                    "model": args.model,
                    "norm": args.norm,
                    "batch": batch,
                    "step": "clars_vmap",
                    "median_s": "skipped",
                    "ratio_to_lars": "",
                    "xla_peak_MiB": "",
                    "samples": 0,
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--norm", default="batch", choices=["batch", "group", "none"])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    p.add_argument("--num-groups", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--vmap-max-batch", type=int, default=512)
    p.add_argument(
        "--unfused",
        action="store_true",
        help="also time clars with the kernel gradients of 'direct' layers left to autodiff",
    )
    args = p.parse_args()
    rows = run(args)
    cols = [
        "model",
        "norm",
        "batch",
        "step",
        "median_s",
        "ratio_to_lars",
        "xla_peak_MiB",
        "samples",
    ]
    print_table(rows, cols)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS: {rss:.0f} MiB")
    write_results("per_example_norms", rows, args=vars(args), peak_rss_MiB=rss)
    print(machine_info())


if __name__ == "__main__":
    main()
