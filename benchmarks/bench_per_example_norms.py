"""Per-example gradient norms: compiled memory and step time against a plain step and vmap.

For each model (CIFAR shape 32x32x3, BatchNorm by default, float32, 10 classes) and batch
size, three ways to get what a CLARS step needs:

* ``plain``: ``jax.value_and_grad`` (loss and gradient only: the baseline, ratio 1.0);
* ``ours``:  ``lars_jax.value_grad_and_norms`` (loss, gradient and per-example norms in one
  forward and one backward pass, each layer's norms inside its own backward step);
* ``vmap``:  ``jax.value_and_grad`` + ``per_example_norms_vmap`` (``vmap(grad)``: B
  gradients materialised; with BatchNorm it normalises each example alone, a different
  quantity, measured for cost only).

Memory: XLA's analysis of the compiled function (``memory_analysis()``: temporaries +
outputs, the arguments excluded as they are the same for all three), deterministic, so
meaningful on a loaded machine. Time (``--time-models``, up to ``--time-max-batch``): the
whole jitted train step, ``plain`` + ``lars_jax.lars`` vs ``ours`` + ``lars_jax.clars`` vs
``vmap`` + ``lars_jax.clars``, interleaved by ``_harness.compare`` so that background load
hits all of them alike. ``--unfused`` adds ``ours`` with the kernel gradients of the
"direct" layers left to autodiff (``per_example._FUSE_DIRECT = False``).

Usage:
  .venv/bin/python benchmarks/bench_per_example_norms.py [--models resnet20 resnet18]
      [--batch 128 512] [--norm batch] [--time-models resnet20] [--time-max-batch 512]
      [--rounds 3] [--calls 1] [--unfused]
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


def _loss_fns(model: Any, variables: dict) -> tuple[Any, Any]:
    stats = variables.get("batch_stats", {})

    def loss_fn(params, x, y):
        if stats:
            logits, _ = model.apply(
                {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
        else:
            logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def per_example_loss(params, xi, yi):
        return loss_fn(params, xi[None], yi[None])

    return loss_fn, per_example_loss


def _grad_fns(loss_fn: Any, per_example_loss: Any) -> dict[str, Any]:
    """What is compared for memory: loss + gradient (+ per-example norms)."""

    def plain(params, x, y):
        return jax.value_and_grad(loss_fn)(params, x, y)

    def ours(params, x, y):
        return lars_jax.value_grad_and_norms(loss_fn, params, x, y)

    def vmap(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return loss, grads, lars_jax.per_example_norms_vmap(per_example_loss, params, x, y)

    return {"plain": plain, "ours": ours, "vmap": vmap}


def _train_steps(grad_fns: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What is timed: the whole train step (gradient part + LARS / CLARS update)."""
    lars = lars_jax.lars(0.1, weight_decay=1e-4)
    clars = lars_jax.clars(0.1, weight_decay=1e-4)

    def plain_step(params, state, x, y):
        loss, grads = grad_fns["plain"](params, x, y)
        updates, state = lars.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    def make_clars_step(name):
        def step(params, state, x, y):
            loss, grads, norms = grad_fns[name](params, x, y)
            updates, state = clars.update(grads, state, params, per_example_norms=norms)
            return optax.apply_updates(params, updates), state, loss

        return step

    return {
        "plain": (plain_step, lars),
        "ours": (make_clars_step("ours"), clars),
        "ours_unfused": (make_clars_step("ours"), clars),
        "vmap": (make_clars_step("vmap"), clars),
    }


def _compiled(fn: Any, *args: Any, unfused: bool = False) -> Any:
    per_example._FUSE_DIRECT = not unfused
    try:
        return jax.jit(fn).lower(*args).compile()
    finally:
        per_example._FUSE_DIRECT = True


def _mib(compiled: Any) -> float:
    m = compiled.memory_analysis()
    return (m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for model_name in args.models:
        for batch in args.batch:
            model = create_model(model_name, num_classes=10, norm=args.norm)
            kx, ky, kp = jax.random.split(jax.random.key(0), 3)
            x = jax.random.normal(kx, (batch, 32, 32, 3))
            y = jax.random.randint(ky, (batch,), 0, 10)
            variables = model.init(kp, x[:2], train=False)
            params = variables["params"]
            loss_fn, per_example_loss = _loss_fns(model, variables)
            grad_fns = _grad_fns(loss_fn, per_example_loss)
            memory = {}
            for name, fn in grad_fns.items():
                memory[name] = _mib(_compiled(fn, params, x, y))
                print(f"{model_name} B={batch} {name}: {memory[name]:.1f} MiB", flush=True)
            times: dict[str, dict[str, Any]] = {}
            if model_name in args.time_models and batch <= args.time_max_batch:
                variants = {}
                for name, (step, tx) in _train_steps(grad_fns).items():
                    if name == "ours_unfused" and not args.unfused:
                        continue
                    state = tx.init(params)
                    c = _compiled(step, params, state, x, y, unfused=name == "ours_unfused")
                    variants[name] = lambda c=c, s=state, p=params, x=x, y=y: c(p, s, x, y)[2]
                times = compare(
                    variants,
                    baseline="plain",
                    warmup=1,
                    rounds=args.rounds,
                    calls_per_round=args.calls,
                )
            for name in ("plain", "ours", "ours_unfused", "vmap"):
                if name not in memory and name not in times:
                    continue
                t = times.get(name, {})
                rows.append(
                    {
                        "model": model_name,
                        "norm": args.norm,
                        "batch": batch,
                        "variant": name,
                        "xla_MiB": memory.get(name, ""),
                        "mem_ratio": memory[name] / memory["plain"] if name in memory else "",
                        "step_s": t.get("median_s", ""),
                        "time_ratio": t.get("ratio_to_plain", ""),
                        "samples": t.get("samples", 0),
                    }
                )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
    p.add_argument("--norm", default="batch", choices=["batch", "group", "none"])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    p.add_argument("--time-models", nargs="*", default=["resnet20"])
    p.add_argument("--time-max-batch", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=1)
    p.add_argument(
        "--unfused",
        action="store_true",
        help="also time `ours` with the kernel gradients of 'direct' layers left to autodiff",
    )
    args = p.parse_args()
    rows = run(args)
    cols = list(rows[0]) if rows else []
    print_table(rows, cols)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS: {rss:.0f} MiB")
    write_results("per_example_norms", rows, args=vars(args), peak_rss_MiB=rss)
    print(machine_info())


if __name__ == "__main__":
    main()
