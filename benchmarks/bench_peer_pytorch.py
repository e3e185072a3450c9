"""Peer benchmark: lars_jax vs plain PyTorch, same ResNet, same LARS update, same run.

For each model (ResNet-20 CIFAR-style, ResNet-18 with a 3x3 stem; `--models mlp2` adds the
two-hidden-layer MLP with BatchNorm of the CPU experiments, which has no convolutions and so
separates XLA's CPU convolution speed from the rest of the step) this script

1. builds the Flax model (`lars_jax.models.create_model`) and its twin in PyTorch
   (`benchmarks/torch_peer.py`), and copies the Flax initial weights into the torch model;
2. checks that both compute the same thing: two LARS steps (paper form, BN and biases
   excluded) from identical weights on the same batch, in float64 on both sides; the weight
   change of every tensor (a conv kernel is reported by name) must agree within
   `--check-rtol` (1e-5). The same check in float32 is reported alongside (float32 rounding,
   amplified by BatchNorm at initialisation, gives relative differences up to ~1e-2 on some
   tensors, depending on the seed, with identical losses);
3. times a full training step (forward, cross-entropy, backward, LARS update) of each variant,
   interleaved round by round on the same batch (`_harness.compare`; every callable
   synchronizes its own device before returning):
     * `pytorch eager`            torch model + `torch_peer.LARS`
     * `pytorch eager 1 thread`   the same with torch.set_num_threads(1) for this variant
                                  (on a shared, oversubscribed CPU one thread can win)
     * `pytorch compile`          `torch.compile` of the model and of the optimizer step
                                  (for --compile-models, default resnet20 only: compiling
                                  takes minutes on a small CPU; skipped with a note if
                                  compilation fails)
     * `lars_jax trainer step`    `lars_jax.train.step.make_train_step` + `lars_jax.lars`,
                                  jitted with the state donated (the step the trainer runs:
                                  it also checks finiteness and computes metrics)
     * `lars_jax minimal step`    jitted `value_and_grad` + `lars_jax.lars` + apply_updates
   and reports images/s and the ratio of our images/s to PyTorch eager's (and to compiled
   PyTorch's when it ran).

Same device (CPU here; `--device cuda` with a CUDA build of both), same batch, float32, and
the same number of threads for PyTorch as the machine's cores used by XLA.

Usage:
  python benchmarks/bench_peer_pytorch.py                      # full run (both models)
  python benchmarks/bench_peer_pytorch.py --quick              # small smoke settings
  python benchmarks/bench_peer_pytorch.py --models resnet20 --batch 256 --no-compile
  python benchmarks/bench_peer_pytorch.py --models mlp2,resnet20 --compile-models mlp2,resnet20

References:
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
  arXiv 1708.03888.
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]
# Passive OpenMP waiting: on a CPU shared with other processes, PyTorch's default spinning
# OpenMP barriers make a 2-thread step up to 30x slower (measured here: 4.4 s vs 0.35 s for a
# ResNet-20 step at batch 16 under a load average of 9). Set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_peer  # noqa: E402
from _harness import compare, print_table, write_results  # noqa: E402

from lars_jax.models import create_model  # noqa: E402

try:
    from lars_jax import lars
except ImportError:  # before the public export lands
    from lars_jax.alias import lars


def _fresh(tree: Any) -> Any:
    """Copies every leaf into its own buffer (a donated state must not alias buffers)."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def _train_step_builder() -> Any:
    try:
        from lars_jax.train.step import StepOptions, init_train_state, make_train_step
    except ImportError:
        return None
    return StepOptions, init_train_state, make_train_step


def jax_minimal_step(model: Any, tx: optax.GradientTransformation, num_classes: int) -> Any:
    """``step(params, stats, opt_state, x, y) -> (params, stats, opt_state, loss)``, jitted."""

    def loss_fn(params, stats, x, y):
        logits, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        onehot = jax.nn.one_hot(y, num_classes)
        return jnp.mean(optax.softmax_cross_entropy(logits, onehot)), upd["batch_stats"]

    def step(params, stats, opt_state, x, y):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def torch_step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor) -> Any:
    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _flat(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flat(v, name))
        else:
            out[name] = np.asarray(v)
    return out


def check_agreement(name: str, hp: dict[str, float], batch: int, device: str, steps: int = 2,
                    num_classes: int = 10, seed: int = 0, dtype: str = "float64"
                    ) -> dict[str, Any]:
    """Runs `steps` LARS steps in both frameworks from the same weights and batch; returns the
    max relative difference of the weight changes, overall and for one named conv kernel.

    With dtype="float64" both sides compute in double precision (the Flax model cloned with
    float64 dtypes under `jax.enable_x64`, the torch model `.double()`), from the float32
    initial weights: this isolates the math from float32 rounding, which BatchNorm at
    initialisation can amplify to ~1e-3..1e-2 relative differences in the gradients of some
    tensors (measured; it depends on the seed).
    """
    if dtype == "float64":
        with jax.enable_x64(True):
            return _check(name, hp, batch, device, steps, num_classes, seed, dtype)
    return _check(name, hp, batch, device, steps, num_classes, seed, dtype)


def _check(name: str, hp: dict[str, float], batch: int, device: str, steps: int,
           num_classes: int, seed: int, dtype: str) -> dict[str, Any]:
    np_dt = np.float64 if dtype == "float64" else np.float32
    model = create_model(name, num_classes=num_classes)
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, 32, 32, 3).astype(np_dt)
    y = rng.randint(0, num_classes, size=batch)
    variables = jax.device_get(model.init(jax.random.key(seed), jnp.asarray(x[:2], jnp.float32),
                                          train=False))
    if dtype == "float64":
        model = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    tx = lars(hp["lr"], weight_decay=hp["wd"], trust_coefficient=hp["tc"], momentum=hp["m"])
    params0 = variables["params"]  # numpy: the jitted step donates its (device) inputs
    params = jax.tree.map(jnp.array, params0)
    stats = jax.tree.map(jnp.array, variables["batch_stats"])
    opt_state = _fresh(tx.init(params))
    step = jax_minimal_step(model, tx, num_classes)
    jlosses = []
    for _ in range(steps):
        params, stats, opt_state, loss = step(params, stats, opt_state, jnp.asarray(x),
                                              jnp.asarray(y))
        jlosses.append(float(loss))

    tmodel = torch_peer.create_model(name, num_classes).to(device)
    if dtype == "float64":
        tmodel = tmodel.double()
    torch_peer.load_flax_variables(tmodel, variables)
    tmodel.train()
    opt = torch_peer.LARS(tmodel.parameters(), lr=hp["lr"], momentum=hp["m"],
                          weight_decay=hp["wd"], trust_coefficient=hp["tc"])
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
    yt = torch.from_numpy(y).long().to(device)
    tstep = torch_step_fn(tmodel, opt, xt, yt)
    tlosses = [float(tstep().detach()) for _ in range(steps)]

    p0 = _flat(jax.device_get(params0))
    p1 = _flat(jax.device_get(params))
    tparams = dict(tmodel.named_parameters())
    worst, worst_name, rows = 0.0, "", {}
    for path, w0 in p0.items():
        *mods, leaf = path.split("/")
        attr = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
        tw = torch_peer.flax_kernel_from_torch(tparams[".".join(mods) + "." + attr])
        dj, dt = p1[path].astype(np.float64) - w0, tw.astype(np.float64) - w0
        rel = float(np.linalg.norm(dj - dt) / max(np.linalg.norm(dj), 1e-30))
        rows[path] = rel
        if rel > worst:
            worst, worst_name = rel, path
    conv = "Dense_1/kernel" if name.startswith("mlp") else "BasicBlock_1/Conv_0/kernel"
    return {
        "model": name,
        "dtype": dtype,
        "steps": steps,
        "conv_tensor": conv,
        "conv_rel_diff_of_update": rows[conv],
        "max_rel_diff_of_update": worst,
        "worst_tensor": worst_name,
        "jax_losses": jlosses,
        "torch_losses": tlosses,
        "conv_update_norm": float(np.linalg.norm(p1[conv] - p0[conv])),
    }


def bench_model(name: str, args: argparse.Namespace, hp: dict[str, float]) -> tuple[
        list[dict[str, Any]], list[str]]:
    notes: list[str] = []
    num_classes, b, dev = 10, args.batch, args.device
    rng = np.random.RandomState(1)
    x = rng.randn(b, 32, 32, 3).astype(np.float32)
    y = rng.randint(0, num_classes, size=b)
    model = create_model(name, num_classes=num_classes)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.asarray(x[:2]), train=False))
    tx = lars(hp["lr"], weight_decay=hp["wd"], trust_coefficient=hp["tc"], momentum=hp["m"])
    xj, yj = jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y))

    variants: dict[str, Any] = {}
    # PyTorch eager.
    tmodel = torch_peer.create_model(name, num_classes).to(dev)
    torch_peer.load_flax_variables(tmodel, variables)
    tmodel.train()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)
    yt = torch.from_numpy(y).long().to(dev)
    opt = torch_peer.LARS(tmodel.parameters(), lr=hp["lr"], momentum=hp["m"],
                          weight_decay=hp["wd"], trust_coefficient=hp["tc"])
    eager = torch_step_fn(tmodel, opt, xt, yt)

    def run_eager() -> None:
        eager()
        _sync(dev)

    variants["pytorch eager"] = run_eager
    threads = torch.get_num_threads()
    if args.torch_1thread and threads > 1 and dev == "cpu":

        def run_eager_1() -> None:
            torch.set_num_threads(1)
            try:
                eager()
            finally:
                torch.set_num_threads(threads)

        variants["pytorch eager 1 thread"] = run_eager_1

    # PyTorch compiled.
    if args.compile and name not in args.compile_models.split(","):
        notes.append(f"{name}: torch.compile not timed (not in --compile-models; compiling "
                     f"ResNet-20 alone took 441 s on the shared 2-core CPU)")
    if args.compile and name in args.compile_models.split(","):
        cmodel = torch_peer.create_model(name, num_classes).to(dev)
        torch_peer.load_flax_variables(cmodel, variables)
        cmodel.train()
        copt = torch_peer.LARS(cmodel.parameters(), lr=hp["lr"], momentum=hp["m"],
                               weight_decay=hp["wd"], trust_coefficient=hp["tc"])
        try:
            t0 = time.perf_counter()
            compiled_model = torch.compile(cmodel)
            compiled_opt_step = torch.compile(copt.step)

            def run_compiled() -> None:
                copt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(compiled_model(xt), yt)
                loss.backward()
                compiled_opt_step()
                _sync(dev)

            run_compiled()
            run_compiled()
            notes.append(f"{name}: torch.compile (model + optimizer step) compiled in "
                         f"{time.perf_counter() - t0:.0f} s")
            variants["pytorch compile"] = run_compiled
        except Exception as e:  # noqa: BLE001 - report and fall back to eager only
            notes.append(f"{name}: torch.compile failed ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); eager only")
            traceback.print_exc()

    # lars_jax with the trainer's step.
    builder = _train_step_builder()
    if builder is not None:
        StepOptions, init_train_state, make_train_step = builder
        tstate = init_train_state(jax.tree.map(jnp.array, variables["params"]),
                                  jax.tree.map(jnp.array, variables["batch_stats"]), tx)
        tr_step = jax.jit(make_train_step(model, tx, StepOptions(num_classes=num_classes)),
                          donate_argnums=0)
        holder = {"s": _fresh(tstate)}

        def run_trainer() -> Any:
            holder["s"], metrics = tr_step(holder["s"], xj, yj)
            return jax.block_until_ready(metrics["loss"])

        variants["lars_jax trainer step"] = run_trainer
    else:
        notes.append("lars_jax.train.step not available: trainer-step variant skipped")

    # lars_jax minimal step.
    mstep = jax_minimal_step(model, tx, num_classes)
    mholder = {"s": _fresh((variables["params"], variables["batch_stats"],
                            tx.init(variables["params"])))}

    def run_minimal() -> Any:
        p, s, o, loss = mstep(*mholder["s"], xj, yj)
        mholder["s"] = (p, s, o)
        return jax.block_until_ready(loss)

    variants["lars_jax minimal step"] = run_minimal

    res = compare(variants, baseline="pytorch eager", warmup=args.warmup, rounds=args.rounds,
                  calls_per_round=args.calls)
    rows = []
    t_eager = res["pytorch eager"]["median_s"]
    t_comp = res.get("pytorch compile", {}).get("median_s")
    for vname, r in res.items():
        rows.append({
            "model": name,
            "variant": vname,
            "batch": b,
            "ms_per_step": 1e3 * r["median_s"],
            "images_per_s": b / r["median_s"],
            "vs_pytorch_eager": t_eager / r["median_s"],
            "vs_pytorch_compile": (t_comp / r["median_s"]) if t_comp else None,
            "samples": r["samples"],
        })
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lars_jax vs PyTorch, side by side")
    parser.add_argument("--models", default="resnet20,resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (torch device)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: os.cpu_count())")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile-models", default="resnet20",
                        help="models to also time with torch.compile (slow to compile on CPU)")
    parser.add_argument("--torch-1thread", action=argparse.BooleanOptionalAction, default=True,
                        help="also time PyTorch eager with 1 thread (a loaded CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--check-batch", type=int, default=32)
    parser.add_argument("--check-rtol", type=float, default=1e-5,
                        help="max relative difference of the float64 updates")
    parser.add_argument("--quick", action="store_true",
                        help="smoke settings: resnet20, batch 16, 1 round, no compile")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.rounds, args.calls, args.warmup = "resnet20", 16, 1, 2, 1
        args.compile, args.check_batch = False, 8
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # Bigger tc than the paper's 0.001 so that the update is well above rounding.
    hp = dict(lr=0.1, wd=5e-4, tc=0.01, m=0.9)

    checks, rows, notes = [], [], []
    for name in args.models.split(","):
        for dt in ("float64", "float32"):
            chk = check_agreement(name, hp, args.check_batch, args.device, dtype=dt)
            # float64 decides (same math); float32 is reported (rounding, amplified by BN).
            chk["ok"] = chk["max_rel_diff_of_update"] <= args.check_rtol if dt == "float64" \
                else None
            checks.append(chk)
            verdict = {True: "OK", False: "MISMATCH", None: "(informational)"}[chk["ok"]]
            print(f"[check {dt}] {name}: rel. diff of the update of {chk['conv_tensor']} "
                  f"after {chk['steps']} steps: {chk['conv_rel_diff_of_update']:.2e}; worst "
                  f"over all tensors {chk['max_rel_diff_of_update']:.2e} "
                  f"({chk['worst_tensor']}); losses jax {chk['jax_losses']} torch "
                  f"{chk['torch_losses']} -> {verdict}")
        r, n = bench_model(name, args, hp)
        rows += r
        notes += n
        print_table(r, ["model", "variant", "ms_per_step", "images_per_s", "vs_pytorch_eager"])
        sys.stdout.flush()  # partial results survive an interrupted run
    print_table(rows, ["model", "variant", "batch", "ms_per_step", "images_per_s",
                       "vs_pytorch_eager", "vs_pytorch_compile"])
    for n in notes:
        print("note:", n)
    write_results("peer_pytorch", rows, checks=checks, notes=notes, hyperparams=hp,
                  torch_threads=threads, device=args.device, argv=sys.argv[1:],
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                  machine_extra={"torch_version": torch.__version__,
                                 "torch_num_threads": torch.get_num_threads()})
    return 0 if all(c["ok"] is not False for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
