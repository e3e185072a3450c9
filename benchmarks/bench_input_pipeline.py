"""Input pipeline throughput (images/s): on-device path and host path vs. ResNet-20 training.

Variants, timed side by side (interleaved rounds, `_harness.compare`) on Fashion-MNIST:
  * device_bB: `DeviceDataset.batch(step)` (permutation indexing + random crop + flip +
    normalize, one jitted call, the 60000 uint8 images resident on the device) for batch B;
  * train_resnet20_bB: one jitted SGD step (forward + backward + update) of ResNet-20 (BN,
    float32) at 28x28x1, the consumer the pipeline has to keep up with;
  * host_bB (timed separately, it is an iterator): `host_batches` (TFDS data source +
    grain threads), batches per second times B.

Target: device images/s >= 10x the ResNet-20 training images/s (input < 10% of a step).

Usage:
  .venv/bin/python benchmarks/bench_input_pipeline.py [--batch 128 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _harness  # noqa: E402

from lars_jax import data, models  # noqa: E402


def train_step_fn(batch: int):
    model = models.create_model("resnet20", num_classes=10)
    x = jnp.zeros((batch, 28, 28, 1), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(params, bstats, opt_state, x, y):
        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": bstats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]

        (loss, bstats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), bstats, opt_state, loss

    state = [variables["params"], variables["batch_stats"], opt_state]

    def run():
        p, b, o, loss = step(*state, x, y)
        state[:] = [p, b, o]
        return loss

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--host-batches", type=int, default=20)
    args = ap.parse_args()

    info = data.dataset_info("fashion_mnist")
    images, labels = data.load_split("fashion_mnist", "train")
    rows = []
    for b in args.batch:
        ds = data.DeviceDataset(images, labels, batch_size=b, seed=0, mean=info.mean,
                                std=info.std, augment=info.augment_defaults)  # fmt: skip
        counter = [0]

        def device_batch(ds=ds, counter=counter):
            counter[0] += 1
            return ds.batch(counter[0])

        res = _harness.compare(
            {f"device_b{b}": device_batch, f"train_resnet20_b{b}": train_step_fn(b)},
            rounds=args.rounds,
            calls_per_round=3,
        )
        dev_ips = b / res[f"device_b{b}"]["median_s"]
        train_ips = b / res[f"train_resnet20_b{b}"]["median_s"]

        # Host path: grain threads over the TFDS data source (PNG decode with PIL).
        it = data.host_batches("fashion_mnist", "train", b, seed=0, num_threads=2, prefetch=4)
        next(it)
        t0 = time.perf_counter()
        for _ in range(args.host_batches):
            next(it)
        host_ips = b * args.host_batches / (time.perf_counter() - t0)
        del it
        for name, ips in (
            (f"device_b{b}", dev_ips),
            (f"host_b{b}", host_ips),
            (f"train_resnet20_b{b}", train_ips),
        ):
            rows.append({
                "variant": name,
                "batch": b,
                "images_per_s": ips,
                "ratio_to_training": ips / train_ips,
                "ms_per_batch": 1000 * b / ips,
            })
    text = _harness.print_table(rows)
    _harness.write_results("input_pipeline", rows, table=text, argv=sys.argv[1:])


if __name__ == "__main__":
    main()
