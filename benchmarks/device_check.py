"""One prepared GPU check: throughput and MFU, PyTorch ratio, CLARS vs LARS, time to accuracy.

Sized to finish in under 8 minutes on one H100/H200 (the GPU windows here are ~15 minutes),
it writes one JSON file and one markdown table (`device_check-<UTC time>.json/.md` in
`--out-dir`) with, in one run on one device:

1. **throughput**: a jitted train step (forward, softmax cross-entropy, backward,
   `lars_jax.lars` update, BatchNorm statistics; bfloat16 compute, float32 parameters) of
   ResNet-18 (CIFAR variant, 32x32x3, 10 classes) and ResNet-50 (224x224x3, 1000 classes)
   at two batch sizes each: images/s and MFU = 3 x 2 x forward MACs (`count_macs`) x images/s
   over the chip's dense bfloat16 peak (`--peak-tflops`, or looked up from the device name);
2. **pytorch**: the same models (`torch_peer.py`, the same initial weights), the same LARS
   update and batch on the same GPU, `torch.autocast` bfloat16 + channels-last, eager; the
   ratio is lars_jax's images/s over PyTorch's;
3. **clars**: ResNet-18 train step with `lars_jax.clars` and exact per-example norms
   (`value_grad_and_norms`, one forward + one backward) against the LARS step: time, and
   peak memory as XLA's compiled estimate (temporaries + arguments + outputs);
4. **time to accuracy**: ResNet-20 on Fashion-MNIST (the README main job's recipe: LARS,
   batch 64, lr 0.125 after a 0.05-epoch warmup, cosine, tc 0.02, wd 5e-4, no augmentation,
   bfloat16), `--tta-epochs` epochs, test accuracy every half epoch, wall time from the
   start of the section (compilation included) to 92%.

It needs only jax, flax, optax, numpy (and torch for section 2: skipped with a note when
missing), not tensorflow-datasets or grain: Fashion-MNIST is read from the four raw IDX
files (`train-images-idx3-ubyte.gz`, ...; Debian's `fashion-mnist` package puts them in
/usr/share/datasets/fashion-mnist), which the runner must bring along, e.g.::

    mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
    # (ignored by git: pass the folder in the device tool's `carry`)
    PYTHONPATH=. python benchmarks/device_check.py --fashion-mnist-dir data/fashion-mnist

Without the files section 4 is skipped with a note. Sections run in the order 1+2, 4, 3;
`--budget-s` (default 360; the last measurement started may add ~2 minutes) stops starting
new measurements once spent, noting what was skipped, and the JSON and markdown files are
rewritten after every section, so a run cut short still leaves what it measured.
`--smoke` runs the same code on the CPU with tiny images and batches and ResNet-8 in every
section (a test runs it in CI). It is compilation-bound, so it compiles one small model
rather than the GPU run's ResNet-18/50/20 (ResNet-50's step alone compiled for ~30 s of the
65 s the smoke took with them at a load average of 3-6, and for 224 s at ~20).

References:
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385.
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
  arXiv 1708.03888.
  Xiao, Rasul, Vollgraf, "Fashion-MNIST", 2017, arXiv 1708.07747 (the IDX files).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# JAX and PyTorch share the GPU in one process: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lars_jax.alias import clars, lars  # noqa: E402
from lars_jax.models import count_macs, create_model  # noqa: E402
from lars_jax.per_example import value_grad_and_norms  # noqa: E402

# Dense bfloat16 peak TFLOP/s by device name (vendor datasheets; SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
LARS_HP = dict(weight_decay=5e-4, trust_coefficient=0.01, momentum=0.9)


def read_idx(path: str | Path) -> np.ndarray:
    """A (gzipped) IDX file of unsigned bytes as a numpy array (LeCun's MNIST format)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {arr.size} bytes of data for shape {shape}")
    return arr.reshape(shape)


def load_fashion_mnist(folder: str | Path) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays from `folder` (images (N, 28, 28, 1) uint8, labels)."""
    out = {}
    for key, name in FASHION_MNIST_FILES.items():
        path = Path(folder) / name
        if not path.exists() and path.with_suffix("").exists():
            path = path.with_suffix("")
        out[key] = read_idx(path)
    out["train_x"], out["test_x"] = out["train_x"][..., None], out["test_x"][..., None]
    return out


def versions() -> dict[str, Any]:
    """Library versions, device and platform of this run."""
    v: dict[str, Any] = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            v[mod] = None
    dev = jax.devices()[0]
    v["jax_backend"] = jax.default_backend()
    v["device"] = getattr(dev, "device_kind", str(dev))
    v["device_count"] = jax.device_count()
    try:
        import torch

        v["torch_cuda"] = torch.version.cuda
        v["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - optional
        pass
    v["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return v


def peak_tflops(device_kind: str, override: float | None) -> float | None:
    if override:
        return override
    for key, val in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_kind.lower():
            return val
    return None


def _sync(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def _time_steps(step: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median-free mean seconds per step over `iters` back-to-back steps after `warmup`."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters


# ---------------------------------------------------------------------------------------
# lars_jax steps.


def bn_loss_fn(model: Any) -> Callable[..., Any]:
    """loss_fn(params, stats, x, y) -> (mean cross-entropy, new BatchNorm statistics)."""

    def loss_fn(params, stats, x, y):
        logits, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, upd["batch_stats"]

    return loss_fn


def lars_step_fn(model: Any, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """step(state, x, y) -> (state, loss): value_and_grad + the update (not jitted)."""

    loss_fn = bn_loss_fn(model)

    def step(state, x, y):
        params, stats, opt_state = state
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    return step


def jax_lars_step(model: Any, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """`lars_step_fn` jitted with the state donated."""
    return jax.jit(lars_step_fn(model, tx), donate_argnums=0)


def jax_clars_step(model: Any, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """The same step with CLARS and exact per-example gradient norms (one backward pass)."""

    loss_fn = bn_loss_fn(model)

    def step(state, x, y):
        params, stats, opt_state = state
        (loss, stats), grads, norms = value_grad_and_norms(loss_fn, params, stats, x, y,
                                                           has_aux=True)
        updates, opt_state = tx.update(grads, opt_state, params, per_example_norms=norms)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    return jax.jit(step, donate_argnums=0)


def _init(model: Any, x: jax.Array) -> Any:
    return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x[:1])


def _compiled_peak_mib(step: Any, *args: Any) -> float | None:
    try:
        m = step.lower(*args).compile().memory_analysis()
        total = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
                 - m.alias_size_in_bytes)
        return total / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _batch(b: int, image: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    return (rng.randn(b, image, image, 3).astype(np.float32),
            rng.randint(0, classes, size=b).astype(np.int32))


def bench_jax(name: str, image: int, classes: int, batch: int, width: float, warmup: int,
              iters: int) -> tuple[dict[str, Any], Any]:
    model = create_model(name, num_classes=classes, width=width, dtype=jnp.bfloat16)
    x, y = _batch(batch, image, classes)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    variables = jax.device_get(_init(model, xj))  # host copy: the step donates its state
    tx = lars(0.1, **LARS_HP)
    step = jax_lars_step(model, tx)
    holder = {"s": jax.tree.map(jnp.array, (variables["params"], variables["batch_stats"],
                                            tx.init(variables["params"])))}

    def run() -> None:
        holder["s"], loss = step(holder["s"], xj, yj)
        _sync(loss)

    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    sec = _time_steps(run, warmup, iters)
    return {"ms_per_step": 1e3 * sec, "images_per_s": batch / sec,
            "compile_s": compile_s}, variables


def bench_torch(name: str, image: int, classes: int, batch: int, width: float,
                variables: Any, warmup: int, iters: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    import torch_peer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch_peer.create_model(name, classes, width=width)
    torch_peer.load_flax_variables(model, variables)
    model = model.to(dev).to(memory_format=torch.channels_last)
    model.train()
    opt = torch_peer.LARS(model.parameters(), lr=0.1, **LARS_HP)
    x, y = _batch(batch, image, classes)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev).contiguous(
        memory_format=torch.channels_last)
    yt = torch.from_numpy(y).long().to(dev)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    sec = _time_steps(run, warmup, iters)
    return {"ms_per_step": 1e3 * sec, "images_per_s": batch / sec, "torch_device": dev}


def _free_torch_cache() -> None:
    """Returns PyTorch's cached GPU memory (the model of the last measurement is garbage)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# Sections.


class Budget:
    """Wall-clock budget: `ok(name)` is False (and records a note) once it is spent."""

    def __init__(self, seconds: float, notes: list[str]) -> None:
        self.end, self.notes = time.perf_counter() + seconds, notes

    def ok(self, what: str) -> bool:
        if time.perf_counter() < self.end:
            return True
        self.notes.append(f"skipped (budget spent): {what}")
        return False


def section_throughput(cfg: dict[str, Any], args: argparse.Namespace, peak: float | None,
                       budget: Budget, notes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name, image, classes, batches in cfg["models"]:
        macs = count_macs(name, (image, image, 3), classes, width=cfg["width"])
        for b in batches:
            if not budget.ok(f"{name} batch {b}"):
                continue
            row: dict[str, Any] = {"model": name, "image": image, "batch": b,
                                   "fwd_gmacs_per_image": macs / 1e9}
            try:
                r, variables = bench_jax(name, image, classes, b, cfg["width"], cfg["warmup"],
                                         cfg["iters"])
                row.update({f"jax_{k}": v for k, v in r.items()})
                train_flops = 3 * 2 * macs * r["images_per_s"]
                row["jax_tflops"] = train_flops / 1e12
                row["jax_mfu"] = train_flops / (peak * 1e12) if peak else None
            except Exception as e:  # noqa: BLE001 - one failing size must not lose the rest
                traceback.print_exc()
                notes.append(f"jax {name} batch {b} failed: {type(e).__name__}: {e}"[:300])
                rows.append(row)
                continue
            if args.torch:
                try:
                    t = bench_torch(name, image, classes, b, cfg["width"], variables,
                                    cfg["warmup"], cfg["iters"])
                    row.update({f"torch_{k}": v for k, v in t.items()})
                    row["jax_over_torch"] = r["images_per_s"] / t["images_per_s"]
                    _free_torch_cache()
                except Exception as e:  # noqa: BLE001 - torch missing or failing
                    traceback.print_exc()
                    notes.append(f"torch {name} batch {b} failed: {type(e).__name__}: {e}"[:300])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def section_clars(cfg: dict[str, Any], budget: Budget, notes: list[str]) -> list[dict[str, Any]]:
    name, image, classes, b = cfg["clars"]
    if not budget.ok("clars vs lars"):
        return []
    model = create_model(name, num_classes=classes, width=cfg["width"], dtype=jnp.bfloat16)
    x, y = _batch(b, image, classes)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    variables = jax.device_get(_init(model, xj))
    rows = []
    for opt_name, tx, make in (("lars", lars(0.1, **LARS_HP), jax_lars_step),
                               ("clars", clars(0.1, **LARS_HP), jax_clars_step)):
        try:
            step = make(model, tx)
            state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
            state = jax.tree.map(jnp.array, state)
            peak = _compiled_peak_mib(step, state, xj, yj)
            holder = {"s": state}

            def run(step=step, holder=holder) -> None:
                holder["s"], loss = step(holder["s"], xj, yj)
                _sync(loss)

            sec = _time_steps(run, cfg["warmup"], cfg["iters"])
            rows.append({"model": name, "batch": b, "optimizer": opt_name,
                         "ms_per_step": 1e3 * sec, "xla_peak_mib": peak})
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            notes.append(f"{opt_name} step failed: {type(e).__name__}: {e}"[:300])
    if len(rows) == 2:
        rows[1]["time_vs_lars"] = rows[1]["ms_per_step"] / rows[0]["ms_per_step"]
        if rows[0]["xla_peak_mib"] and rows[1]["xla_peak_mib"]:
            rows[1]["memory_vs_lars"] = rows[1]["xla_peak_mib"] / rows[0]["xla_peak_mib"]
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def section_time_to_accuracy(cfg: dict[str, Any], args: argparse.Namespace, budget: Budget,
                             notes: list[str]) -> dict[str, Any] | None:
    if not args.fashion_mnist_dir:
        notes.append("time to accuracy skipped: no --fashion-mnist-dir")
        return None
    if not budget.ok("time to accuracy"):
        return None
    t_start = time.perf_counter()
    data = load_fashion_mnist(args.fashion_mnist_dir)
    n_train = cfg["tta_train"] or len(data["train_y"])
    n_test = cfg["tta_test"] or len(data["test_y"])
    train_x = jnp.asarray(data["train_x"][:n_train])
    train_y = jnp.asarray(data["train_y"][:n_train].astype(np.int32))
    test_x = jnp.asarray(data["test_x"][:n_test])
    test_y = jnp.asarray(data["test_y"][:n_test].astype(np.int32))
    b = cfg["tta_batch"]
    steps_per_epoch = n_train // b
    total = max(1, int(args.tta_epochs * steps_per_epoch))
    lr = 0.5 * b / 256
    warm = max(1, int(0.05 * steps_per_epoch))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warm, total, 0.0)
    tx = lars(schedule, weight_decay=5e-4, trust_coefficient=0.02, momentum=0.9)
    model = create_model(cfg["tta_model"], num_classes=10, width=cfg["width"],
                         dtype=jnp.bfloat16)

    def prep(x):
        return (x.astype(jnp.float32) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD

    variables = _init(model, prep(train_x[:1]))
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    step = lars_step_fn(model, tx)
    chunk = cfg["tta_chunk"]

    @jax.jit
    def run_chunk(state, idx):
        return jax.lax.scan(lambda s, i: step(s, prep(train_x[i]), train_y[i]), state, idx)

    @jax.jit
    def accuracy(params, stats):
        def one(_, i):
            xb = jax.lax.dynamic_slice_in_dim(test_x, i * 1000, 1000)
            yb = jax.lax.dynamic_slice_in_dim(test_y, i * 1000, 1000)
            logits = model.apply({"params": params, "batch_stats": stats}, prep(xb),
                                 train=False)
            return None, jnp.sum(jnp.argmax(logits, -1) == yb)
        _, hits = jax.lax.scan(one, None, jnp.arange(n_test // 1000))
        return jnp.sum(hits) / (n_test // 1000 * 1000)

    rng = np.random.RandomState(0)
    order = np.concatenate([rng.permutation(n_train)[:steps_per_epoch * b]
                            for _ in range(int(np.ceil(total / steps_per_epoch)) + 1)])
    evals, done, reached = [], 0, None
    eval_every = max(1, int(0.5 * steps_per_epoch))
    while done < total:
        if not budget.ok(f"time to accuracy after step {done}"):
            break
        n = min(chunk, total - done, eval_every - done % eval_every)
        idx = jnp.asarray(order[done * b:(done + n) * b].reshape(n, b))
        state, losses = run_chunk(state, idx)
        done += n
        if done % eval_every == 0 or done == total:
            acc = float(accuracy(state[0], state[1]))
            wall = time.perf_counter() - t_start
            evals.append({"step": done, "epoch": done / steps_per_epoch, "wall_s": wall,
                          "test_accuracy": acc, "train_loss": float(losses[-1])})
            print(json.dumps(evals[-1]), flush=True)
            if reached is None and acc >= args.tta_target:
                reached = wall
    return {"model": cfg["tta_model"], "batch": b, "lr": lr, "epochs": args.tta_epochs,
            "train_examples": n_train, "test_examples": n_test, "target": args.tta_target,
            "time_to_target_s": reached, "evals": evals}


# ---------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [f"Device check on **{v['device']}** ({v['jax_backend']}), {result['date']}; "
             f"jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, optax {v['optax']}, "
             f"torch {v.get('torch')} (CUDA {v.get('torch_cuda')}); peak bf16 "
             f"{result['peak_tflops']} TFLOP/s; smoke={result['smoke']}; "
             f"{result['wall_s']:.0f} s.", "",
             "| model | image | batch | lars_jax img/s | MFU | PyTorch img/s | lars_jax / PyTorch "
             "| compile s |", "|---|---|---|---|---|---|---|---|"]

    def f(x: Any, spec: str = ".4g") -> str:
        return "-" if x is None else format(x, spec)

    for r in result["throughput"]:
        lines.append(f"| {r['model']} | {r['image']} | {r['batch']} | "
                     f"{f(r.get('jax_images_per_s'))} | {f(r.get('jax_mfu'), '.1%')} | "
                     f"{f(r.get('torch_images_per_s'))} | {f(r.get('jax_over_torch'), '.2f')} | "
                     f"{f(r.get('jax_compile_s'), '.0f')} |")
    if result["clars"]:
        lines += ["", "| step | model | batch | ms/step | XLA peak MiB | vs LARS time | "
                  "vs LARS memory |", "|---|---|---|---|---|---|---|"]
        for r in result["clars"]:
            lines.append(f"| {r['optimizer']} | {r['model']} | {r['batch']} | "
                         f"{f(r['ms_per_step'])} | {f(r['xla_peak_mib'])} | "
                         f"{f(r.get('time_vs_lars'), '.2f')} | "
                         f"{f(r.get('memory_vs_lars'), '.2f')} |")
    tta = result["time_to_accuracy"]
    if tta:
        lines += ["", f"Fashion-MNIST, {tta['model']}, batch {tta['batch']}, "
                  f"{tta['epochs']} epochs "
                  f"({tta['train_examples']} train / {tta['test_examples']} test examples): "
                  f"time to {tta['target']:.0%}: "
                  f"{f(tta['time_to_target_s'], '.1f')} s", "",
                  "| epoch | wall s | test accuracy |", "|---|---|---|"]
        for e in tta["evals"]:
            lines.append(f"| {e['epoch']:.2f} | {e['wall_s']:.1f} | {e['test_accuracy']:.2%} |")
    if result["notes"]:
        lines += [""] + [f"* {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (< 1 minute)")
    p.add_argument("--out-dir", default=str(_HERE / "results"))
    p.add_argument("--fashion-mnist-dir", default=None,
                   help="folder with the four Fashion-MNIST IDX .gz files")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting measurements after this many seconds (default 360; "
                   "none with --smoke, which must run every section)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device (default: looked up by name)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--tta-epochs", type=float, default=5.0)
    p.add_argument("--tta-target", type=float, default=0.92)
    args = p.parse_args(argv)

    if args.smoke:
        cfg = dict(models=[("resnet8", 8, 10, (4,))], width=0.125, warmup=1, iters=2,
                   clars=("resnet8", 8, 10, 4), tta_model="resnet8", tta_train=256,
                   tta_test=1000, tta_batch=32, tta_chunk=4)
        args.tta_epochs = min(args.tta_epochs, 1.0)
    else:
        cfg = dict(models=[("resnet18", 32, 10, (256, 1024)), ("resnet50", 224, 1000, (64, 256))],
                   width=1.0, warmup=3, iters=10, clars=("resnet18", 32, 10, 256),
                   tta_model="resnet20", tta_train=None, tta_test=None, tta_batch=64,
                   tta_chunk=100)
    t0 = time.perf_counter()
    notes: list[str] = []
    if args.torch and importlib.util.find_spec("torch") is None:
        args.torch = False
        notes.append("torch is not installed: the PyTorch comparison is skipped")
    if args.budget_s is None:
        args.budget_s = float("inf") if args.smoke else 360.0
    budget = Budget(args.budget_s, notes)
    v = versions()
    peak = None if v["jax_backend"] == "cpu" else peak_tflops(v["device"], args.peak_tflops)
    if peak is None and v["jax_backend"] != "cpu":
        notes.append(f"no bf16 peak known for {v['device']!r}: MFU not computed "
                     "(pass --peak-tflops)")
    print(json.dumps(v), flush=True)
    result: dict[str, Any] = {
        "benchmark": "device_check", "argv": sys.argv[1:] if argv is None else argv,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "smoke": args.smoke,
        "versions": v, "peak_tflops": peak, "config": {k: str(x) for k, x in cfg.items()},
        "notes": notes,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    result.update(throughput=[], clars=[], time_to_accuracy=None, section_wall_s={})

    def save() -> None:  # after every section: a run cut short still leaves its results
        result["wall_s"] = time.perf_counter() - t0
        (out / f"device_check-{stamp}.json").write_text(json.dumps(result, indent=2,
                                                                   default=str))
        (out / f"device_check-{stamp}.md").write_text(markdown(result))

    for key, run in (("throughput", lambda: section_throughput(cfg, args, peak, budget, notes)),
                     ("time_to_accuracy",
                      lambda: section_time_to_accuracy(cfg, args, budget, notes)),
                     ("clars", lambda: section_clars(cfg, budget, notes))):
        t = time.perf_counter()
        result[key] = run()
        result["section_wall_s"][key] = time.perf_counter() - t
        save()
    print(markdown(result))
    print(f"wrote {out}/device_check-{stamp}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
