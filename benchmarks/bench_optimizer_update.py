"""Time of one jitted optimizer step (update + apply_updates) on ResNet-sized parameter trees.

Compares lars_jax.lars / larc / clars with optax.lars and optax.sgd, interleaved in one
run (benchmarks/_harness.py `compare`). The parameter trees are plain dicts of arrays
with the shapes of torchvision-style ImageNet ResNet-18 (11.69M parameters) and
ResNet-50 (25.56M), BatchNorm scales/offsets and the classifier bias included.

Variants (all momentum 0.9, weight decay 1e-4, trust coefficient 0.001):
  lars_jax.lars          paper denominator, default mask (ndim > 1 tensors only)
  lars_jax.lars[optax]   denominator="optax" (optax.lars's defaults: every tensor): the
                         same math and arguments as optax.lars, the drop-in form
  lars_jax.larc          as lars_jax.lars with clip=1
  lars_jax.clars         as lars_jax.lars with per-example norms given (n = 8 per tensor)
  optax.lars             defaults: trust ratio and weight decay on every tensor
  optax.sgd              momentum SGD, no weight decay (the floor)

A second, small table times one tensor's norm, the part of the update where the
implementations differ: lars_jax's norm (``lars_jax.trust_ratio._norm``: one plain sum of
squares, with a rescaled recomputation selected by ``lax.cond`` only where that sum
over- or underflows), that rescaled norm alone (``_scaled_norm``: a max pass, then the
scaled sum; what every norm cost before 2026-12-07), ``jnp.linalg.norm``, and
``optax._src.numerics.safe_norm(x, 0.)`` (what ``optax.scale_by_trust_ratio`` uses: a
where over the whole tensor and a second norm, which XLA:CPU does not fuse into one pass).

Usage:
  .venv/bin/python benchmarks/bench_optimizer_update.py [--models resnet18 resnet50]
      [--rounds 7] [--calls 5] [--no-probe] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import compare, print_table, write_results  # noqa: E402

import lars_jax  # noqa: E402


def _conv_bn(tree: dict, name: str, k: int, cin: int, cout: int) -> None:
    tree[name] = {"kernel": (k, k, cin, cout)}
    tree[name + "_bn"] = {"scale": (cout,), "bias": (cout,)}


def resnet_shapes(depth: int, num_classes: int = 1000) -> dict:
    """Parameter shapes of an ImageNet ResNet-18/34 (basic) or -50/101/152 (bottleneck)."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
              152: (3, 8, 36, 3)}[depth]
    bottleneck = depth >= 50
    tree: dict = {}
    _conv_bn(tree, "stem", 7, 3, 64)
    cin = 64
    for s, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
        cout = 4 * width if bottleneck else width
        for b in range(n):
            blk: dict = {}
            if bottleneck:
                _conv_bn(blk, "conv1", 1, cin, width)
                _conv_bn(blk, "conv2", 3, width, width)
                _conv_bn(blk, "conv3", 1, width, cout)
            else:
                _conv_bn(blk, "conv1", 3, cin, width)
                _conv_bn(blk, "conv2", 3, width, width)
            if b == 0 and cin != cout:
                _conv_bn(blk, "proj", 1, cin, cout)
            tree[f"stage{s + 1}_block{b + 1}"] = blk
            cin = cout
    tree["head"] = {"kernel": (cin, num_classes), "bias": (num_classes,)}
    return tree


def make_tree(shapes: dict, key: jax.Array, scale: float = 0.05) -> dict:
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    arrays = [scale * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves,
                                                                         strict=True)]
    return jax.tree.unflatten(treedef, arrays)


def make_step(tx: optax.GradientTransformation, params, grads, **extra) -> Callable[[], object]:
    """A zero-argument callable running one jitted, donated update + apply on live state."""

    def _step(params, state, grads, extra):
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    step = jax.jit(_step, donate_argnums=(0, 1))
    live = {"params": jax.tree.map(jnp.copy, params), "state": tx.init(params)}

    def run():
        live["params"], live["state"] = step(live["params"], live["state"], grads, extra)
        return live["params"]

    return run


def variants(params, grads, norms) -> dict[str, Callable[[], object]]:
    hp = dict(weight_decay=1e-4, momentum=0.9)
    lr = 0.1
    return {
        "optax.lars": make_step(optax.lars(lr, trust_coefficient=1e-3, **hp), params, grads),
        "lars_jax.lars": make_step(lars_jax.lars(lr, **hp), params, grads),
        "lars_jax.lars[optax]": make_step(
            lars_jax.lars(lr, denominator="optax", **hp), params, grads),
        "lars_jax.larc": make_step(lars_jax.larc(lr, **hp), params, grads),
        "lars_jax.clars": make_step(lars_jax.clars(lr, **hp), params, grads,
                                    per_example_norms=norms),
        "optax.sgd": make_step(optax.sgd(lr, momentum=0.9), params, grads),
    }


def norm_probe(rounds: int, calls: int) -> list[dict]:
    """Times one norm of a 4096 x 2048 float32 tensor: lars_jax's, jnp.linalg.norm, optax's."""
    from optax._src import numerics  # private, but it is exactly what optax.lars runs

    # private: the norm every lars_jax update takes, and its rescaled fallback (which was
    # every norm before the one-reduction path)
    from lars_jax.trust_ratio import _norm, _scaled_norm

    x = jax.random.normal(jax.random.key(2), (4096, 2048), jnp.float32)
    ours = jax.jit(_norm)
    scaled = jax.jit(_scaled_norm)
    plain = jax.jit(jnp.linalg.norm)
    safe = jax.jit(lambda v: numerics.safe_norm(v, 0.0))
    res = compare({"lars_jax norm": lambda: ours(x), "lars_jax scaled norm": lambda: scaled(x),
                   "jnp.linalg.norm": lambda: plain(x), "optax safe_norm": lambda: safe(x)},
                  baseline="jnp.linalg.norm", rounds=rounds, calls_per_round=calls)
    return [{"model": "norm 4096x2048", "params": x.size, "tensors": 1, "variant": name,
             "median_ms": 1e3 * r["median_s"], "min_ms": 1e3 * r["min_s"],
             "ratio_to_jnp.linalg.norm": r["ratio_to_jnp.linalg.norm"],
             "samples": r["samples"]} for name, r in res.items()]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["resnet18", "resnet50"],
                    choices=["resnet18", "resnet50"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--no-probe", action="store_true", help="skip the norm probe")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    rows = []
    for model in args.models:
        shapes = resnet_shapes(int(model.removeprefix("resnet")))
        params = make_tree(shapes, jax.random.key(0))
        grads = make_tree(shapes, jax.random.key(1), scale=1e-3)
        norms = jax.tree.map(lambda g: jnp.linspace(1.0, 2.0, 8) * jnp.linalg.norm(g), grads)
        n_params = sum(x.size for x in jax.tree.leaves(params))
        n_tensors = len(jax.tree.leaves(params))
        print(f"{model}: {n_params:,} parameters in {n_tensors} tensors")
        res = compare(variants(params, grads, norms), baseline="optax.lars", warmup=3,
                      rounds=args.rounds, calls_per_round=args.calls)
        for name, r in res.items():
            rows.append({"model": model, "params": n_params, "tensors": n_tensors,
                         "variant": name, "median_ms": 1e3 * r["median_s"],
                         "min_ms": 1e3 * r["min_s"],
                         "ratio_to_optax.lars": r["ratio_to_optax.lars"],
                         "samples": r["samples"]})
    print_table(rows, ["model", "variant", "median_ms", "min_ms", "ratio_to_optax.lars",
                       "samples"])
    if not args.no_probe:
        probe = norm_probe(args.rounds, args.calls)
        print()
        print_table(probe, ["model", "variant", "median_ms", "min_ms",
                            "ratio_to_jnp.linalg.norm", "samples"])
        rows += probe
    if not args.no_write:
        write_results("optimizer_update", rows, command=" ".join(sys.argv))
    return rows


if __name__ == "__main__":
    main()
