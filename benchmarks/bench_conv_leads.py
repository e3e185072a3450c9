"""The CPU convolution leads of issue 12, timed side by side on one train step.

One jitted train step (forward, softmax cross-entropy, backward, `lars_jax.lars` update,
BatchNorm statistics) of a lars_jax ResNet, per variant:

* `xla <dtype>`      the models' `conv_impl="xla"` (`flax.linen.Conv` ->
                     `lax.conv_general_dilated`), float32 or bfloat16 compute;
* `patches <dtype>`  `conv_impl="patches"` (`lars_jax.models.conv`: strided slices of the
                     padded input concatenated into a patch matrix, one matrix product; its
                     gradients are matrix products too, no `lhs_dilation`);
* `lax_patches <dtype>` the same product, but with the patch matrix built by
                     `lax.conv_general_dilated_patches` (itself a convolution with a one-hot
                     kernel), the issue's literal lead;

* `xla <dtype> scanK` (with `--scan K`) K steps in one `lax.scan` (a while loop, as
                     `steps_per_call` and gradient accumulation compile), time per step;

all interleaved round by round (`_harness.compare`), plus the max relative difference of
each variant's loss and updated parameters from `xla float32` after one step (same
weights, same batch). Flags (oneDNN, thunk runtime) act process-wide: run the script once
per `XLA_FLAGS` setting and compare the `xla float32` row across runs only with care (load).

Usage:
  python benchmarks/bench_conv_leads.py                              # ResNet-20, 28x28x1, B=64
  python benchmarks/bench_conv_leads.py --model resnet18 --image 32 --channels 3 --batch 32
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/bench_conv_leads.py --variants xla
  python benchmarks/bench_conv_leads.py --variants xla --scan 2   # steps inside a while loop
  python benchmarks/bench_conv_leads.py --quick
  python benchmarks/bench_conv_leads.py --quick --layouts --variants xla --dtypes float32
  python benchmarks/bench_conv_leads.py --dump /tmp/hlo   # XLA_FLAGS --xla_dump_to for layouts

References:
  Chellapilla, Puri, Simard, "High Performance Convolutional Neural Networks for Document
  Processing", IWFHR 2006.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--image", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--variants", default="xla,patches,lax_patches",
                   help="comma list of xla, patches, lax_patches")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--scan", type=int, default=0,
                   help="also time K xla steps inside one lax.scan (per-step time reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the PyTorch twin (eager, float32) as the first variant")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time torch.compile of the twin's model and LARS step")
    p.add_argument("--out", default=None, help="also write the rows as JSON to this path")
    p.add_argument("--layouts", action="store_true",
                   help="print the convolution layouts XLA chose for one step and for a scan")
    p.add_argument("--dump", default=None, help="directory for XLA's HLO dumps (--xla_dump_to)")
    p.add_argument("--quick", action="store_true", help="resnet8, 16x16 images, B=8, 1 round")
    p.add_argument("--no-write", action="store_true", help="do not write a results JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.rounds, args.calls, args.warmup = "resnet8", 8, 1, 1, 1
        args.image = 16
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.dump:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_dump_to={args.dump} --xla_dump_hlo_as_text").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from _harness import compare, print_table, write_results

    from lars_jax.alias import lars
    from lars_jax.models import create_model

    def lax_patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                       rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                       precision=None, **_: Any):
        nd = lhs.ndim - 2
        patches = jax.lax.conv_general_dilated_patches(
            lhs, rhs.shape[:nd], window_strides, padding, rhs_dilation=rhs_dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        # conv_general_dilated_patches orders the patch features (c_in, *kernel_spatial).
        kernel = jnp.moveaxis(rhs, nd, 0).reshape(-1, rhs.shape[-1])
        return jnp.einsum("...k,ko->...o", patches, kernel.astype(patches.dtype),
                          precision=precision)

    def split_conv(parts):
        def conv(lhs, rhs, *a, **k):
            return jnp.concatenate([jax.lax.conv_general_dilated(p, rhs, *a, **k)
                                    for p in jnp.split(lhs, parts, axis=0)], axis=0)
        return conv

    impls = {"xla": None, "patches": None, "lax_patches": lax_patch_conv,
             "split2": split_conv(2), "split4": split_conv(4)}
    num_classes, b = 10, args.batch
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(b, args.image, args.image, args.channels).astype(np.float32))
    y = jnp.asarray(rng.randint(0, num_classes, size=b))
    base = create_model(args.model, num_classes=num_classes)
    variables = jax.jit(lambda x: base.init(jax.random.key(0, impl="rbg"), x, train=False))(
        x[:2])
    tx = lars(0.1, weight_decay=5e-4, trust_coefficient=0.01, momentum=0.9)

    def make_step(model):
        def loss_fn(params, stats):
            logits, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]

        def step(state):
            params, stats, opt_state = state
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), loss

        return jax.jit(step)

    def make_scan(model, k, unroll=1):
        step = make_step(model)

        def run(state):  # k steps in one while loop; the loss of the last one
            state, losses = jax.lax.scan(lambda s, _: step(s), state, None, length=k,
                                         unroll=unroll)
            return state, losses[-1]

        return jax.jit(run)

    state0 = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    variants, first, scan_names = {}, {}, []
    for dt in args.dtypes.split(","):
        for impl in args.variants.split(","):
            if impl not in impls:
                raise ValueError(f"--variants: unknown {impl!r}; known {sorted(impls)}")
            model = base.clone(dtype=jnp.dtype(dt))
            if impls[impl] is not None:  # not a model option: injected by interception
                step = make_step(_with_conv(model.clone(conv_impl="xla"), impls[impl]))
            else:
                step = make_step(model.clone(conv_impl=impl))
            name = f"{impl} {dt}"
            first[name] = jax.device_get(step(state0))
            variants[name] = (lambda step=step: step(state0)[1])
            if args.scan > 1 and impl == "xla":  # lead: conv layouts inside while bodies
                scanned = make_scan(model.clone(conv_impl="xla"), args.scan)
                variants[f"xla {dt} scan{args.scan} (per step)"] = (
                    lambda f=scanned: f(state0)[1])
                scan_names.append(f"xla {dt} scan{args.scan} (per step)")
                unrolled = make_scan(model.clone(conv_impl="xla"), args.scan, unroll=True)
                variants[f"xla {dt} scan{args.scan} unrolled (per step)"] = (
                    lambda f=unrolled: f(state0)[1])
                scan_names.append(f"xla {dt} scan{args.scan} unrolled (per step)")

    if args.torch:
        variants = {**_torch_variants(args, variables, x, y), **variants}
    if args.layouts:
        for name, fn in (("one step", make_step(base.clone(conv_impl="xla"))),
                         ("2 steps in lax.scan", make_scan(base.clone(conv_impl="xla"), 2))):
            print(f"convolution layouts, {name}:", conv_layouts(fn, state0))
    ref_name = next(iter(first))
    ref_state, ref_loss = first[ref_name]
    diffs = {}
    for name, (st, loss) in first.items():
        worst = 0.0
        for a, r in zip(jax.tree.leaves(st[0]), jax.tree.leaves(ref_state[0]), strict=True):
            d0 = np.asarray(r, np.float64)
            worst = max(worst, float(np.max(np.abs(np.asarray(a, np.float64) - d0))
                                 / max(np.max(np.abs(d0)), 1e-30)))
        diffs[name] = (abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)), worst)

    res = compare(variants, baseline=next(iter(variants)), warmup=args.warmup, rounds=args.rounds,
                  calls_per_round=args.calls)
    for name in scan_names:  # a call runs args.scan steps: report per step
        res[name] = {**res[name], "median_s": res[name]["median_s"] / args.scan}
    rows = []
    for name, r in res.items():
        rows.append({
            "model": args.model, "batch": b, "variant": name,
            "ms_per_step": 1e3 * r["median_s"], "images_per_s": b / r["median_s"],
            "speedup_vs_" + ref_name.replace(" ", "_"): res[ref_name]["median_s"] / r["median_s"],
            "vs_pytorch_eager": (res["pytorch eager"]["median_s"] / r["median_s"]
                                 if "pytorch eager" in res else None),
            "loss_rel_diff": diffs.get(name, (None, None))[0],
            "param_max_rel_diff": diffs.get(name, (None, None))[1],
            "samples": r["samples"],
        })
    print_table(rows)
    if not args.no_write:
        write_results("conv_leads", rows, argv=sys.argv[1:],
                      load_average=os.getloadavg())
    if args.out:
        import json

        Path(args.out).write_text(json.dumps(
            {"xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows}, default=str))
        # the reference variant's parameters after one step, for comparisons across processes
        np.savez(Path(args.out).with_suffix(".npz"),
                 *[np.asarray(a, np.float64) for a in jax.tree.leaves(ref_state[0])])
    return 0


def conv_layouts(fn: Any, *args: Any) -> dict[str, int]:
    """Counts of `dim_labels` of the convolutions in the optimized HLO of `fn(*args)`.

    XLA:CPU's fast (Eigen) convolution wants `b01f_01io->b01f` (NHWC input, HWIO kernel,
    NHWC output); "+lhs_dilation" marks input gradients of strided convolutions.
    """
    import re

    text = fn.lower(*args).compile().as_text()
    counts: dict[str, int] = {}
    for window, labels in re.findall(r"convolution\(.*?window=\{([^}]*)\}, dim_labels=([\w>-]+)",
                                     text):
        key = labels + ("+lhs_dilation" if "lhs_dilate" in window else "")
        counts[key] = counts.get(key, 0) + 1
    return counts


def _torch_variants(args: argparse.Namespace, variables: Any, x: Any, y: Any) -> dict[str, Any]:
    """PyTorch eager (float32, channels-first) of the same model, weights and batch."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
        import torch.nn.functional as F
        import torch_peer
    except ImportError:
        return {}
    import jax
    import numpy as np

    torch.set_num_threads(os.cpu_count() or 1)
    model = torch_peer.create_model(args.model, 10, in_channels=args.channels)
    torch_peer.load_flax_variables(model, jax.device_get(variables))
    model.train()
    opt = torch_peer.LARS(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                          trust_coefficient=0.01)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(np.array(y)).long()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt).backward()
        opt.step()

    variants = {"pytorch eager": step}
    if args.torch_compile:  # a second twin, so that eager and compiled start from one state
        cmodel = torch_peer.create_model(args.model, 10, in_channels=args.channels)
        torch_peer.load_flax_variables(cmodel, jax.device_get(variables))
        cmodel.train()
        copt = torch_peer.LARS(cmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                               trust_coefficient=0.01)
        compiled_model, compiled_opt_step = torch.compile(cmodel), torch.compile(copt.step)

        def compiled_step() -> None:
            copt.zero_grad(set_to_none=True)
            F.cross_entropy(compiled_model(xt), yt).backward()
            compiled_opt_step()

        compiled_step()  # compiles (minutes on a small CPU), outside the timed rounds
        variants["pytorch compile"] = compiled_step
    return variants


def _with_conv(model: Any, conv_fn: Any) -> Any:
    """The model with every nn.Conv given `conv_general_dilated=conv_fn` (via interception).

    The interceptor sets the field on each (freshly built, per-apply) nn.Conv instance before
    its call; a benchmark-only device, not a model option.
    """
    import flax.linen as nn

    class _Wrapped:
        def __init__(self, m):
            self.m = m

        def apply(self, *a, **k):
            def interceptor(next_fun, args, kwargs, context):
                mod = context.module
                if type(mod) is nn.Conv and context.method_name == "__call__" \
                        and mod.conv_general_dilated is None:
                    object.__setattr__(mod, "conv_general_dilated", conv_fn)
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(interceptor):
                return self.m.apply(*a, **k)

    return _Wrapped(model)


if __name__ == "__main__":
    raise SystemExit(main())
