"""The train step: jit (Mesh + shard_map), pmap and one device agree; gradient accumulation;
BatchNorm span; non-finite guard; noise-scale statistics."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lars_jax.train import parallel as par
from lars_jax.train.step import StepOptions, init_train_state, make_train_step

N_DEV = 8
B = 64


class TinyNet(nn.Module):
    """Conv -> (BatchNorm) -> relu -> mean pool -> Dense: small enough for fast tests."""

    norm: bool = True
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train=True):
        x = nn.Conv(4, (3, 3))(x)
        if self.norm:
            x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
        x = nn.relu(x).mean((1, 2))
        return nn.Dense(10)(x)


RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (256, 8, 8, 1), dtype=np.uint8)
LABELS = RNG.integers(0, 10, 256).astype(np.int32)
PREPARE = par.make_prepare(seed=0, batch_size=B, mean=0.5, std=0.25, dtype=jnp.float32,
                           augment={"crop_padding": 1, "flip": True})


@functools.cache
def _run(n, path, *, steps=3, accum=1, norm=True, sync_stats=False, axis=True,
         nan_policy="stop", lr=0.1, clars=False):
    ax = "data" if axis else None
    model = TinyNet(norm=norm, axis_name=ax)
    variables = TinyNet(norm=norm).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    if clars:
        import lars_jax

        tx = optax.inject_hyperparams(lars_jax.clars)(learning_rate=lr, momentum=0.9,
                                                      trust_coefficient=0.02)
    else:
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9)
    state = init_train_state(variables["params"], variables.get("batch_stats", {}), tx)
    opts = StepOptions(num_classes=10, axis_name=ax, num_devices=n, grad_accum_steps=accum,
                       sync_batch_stats=sync_stats, nan_policy=nan_policy,
                       clars_granularity="example" if clars else None)
    step_fn = make_train_step(model, tx, opts)
    mesh = par.make_mesh(n)
    images = par.put_global(IMAGES, par.replicated(mesh))
    labels = par.put_global(LABELS, par.replicated(mesh))
    if path == "jit":
        fn = par.jit_train_step(step_fn, PREPARE, mesh)
        state = par.put_replicated(state, mesh)
    else:
        devices = mesh.devices.tolist()
        fn = par.pmap_train_step(step_fn, PREPARE, devices)
        state = par.replicate(state, devices)
    history = []
    for s in range(steps):
        state, m = fn(state, images, labels, np.int32(s))
        history.append(jax.device_get(m))
    if path == "pmap":
        state = par.unreplicate(state)
    return jax.device_get(state), history, jax.device_get(variables)


def _maxdiff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_jit_pmap_and_one_device_agree_with_global_bn():
    """Cross-device BN (bn_span="global"): 8-device jit, 8-device pmap and 1 device give the
    same parameters and BN statistics after 3 steps on the same global batches.
    Tolerance: 1e-5 absolute (float32 reduction order differs between the paths)."""
    one, h1, init = _run(1, "jit")
    jit8, h8, _ = _run(N_DEV, "jit")
    pmap8, hp, _ = _run(N_DEV, "pmap")
    for other in (jit8, pmap8):
        assert int(other.step) == 3
        assert _maxdiff(one.params, other.params) < 1e-5
        assert _maxdiff(one.batch_stats, other.batch_stats) < 1e-5
    np.testing.assert_allclose(h1[-1]["loss"], h8[-1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(h8[-1]["loss"], hp[-1]["loss"], rtol=1e-6)
    # the parameters really moved
    assert _maxdiff(one.params, init["params"]) > 1e-3


def test_clars_with_per_example_norms_jit_and_pmap_agree():
    """CLARS (per-example norms from the one-pass backward, taken on each device) gives the
    same parameters on the jit (shard_map) and pmap paths over 8 devices."""
    jit8, hj, init = _run(N_DEV, "jit", clars=True)
    pmap8, hp, _ = _run(N_DEV, "pmap", clars=True)
    assert int(jit8.step) == int(pmap8.step) == 3
    assert _maxdiff(jit8.params, pmap8.params) < 1e-5
    np.testing.assert_allclose(hj[-1]["loss"], hp[-1]["loss"], rtol=1e-5)
    assert _maxdiff(jit8.params, init["params"]) > 1e-4
    # CLARS's ratios are not SGD's: the update differs from momentum SGD at the same lr
    assert _maxdiff(jit8.params, _run(N_DEV, "jit")[0].params) > 1e-4


def test_gradient_accumulation_equals_one_large_batch_without_bn():
    big, hb, _ = _run(1, "jit", norm=False, accum=1)
    acc, ha, _ = _run(1, "jit", norm=False, accum=4)
    acc8 = _run(N_DEV, "jit", norm=False, accum=2)[0]
    assert _maxdiff(big.params, acc.params) < 1e-6
    assert _maxdiff(big.params, acc8.params) < 1e-6
    np.testing.assert_allclose(hb[-1]["loss"], ha[-1]["loss"], rtol=1e-6)
    # noise-scale statistics exist with >= 2 groups, and a group's gradient is noisier
    assert "grad_sqnorm_small" not in hb[-1]
    assert ha[-1]["batch_small"] == B // 4 and ha[-1]["batch_big"] == B
    assert ha[-1]["grad_sqnorm_small"] > ha[-1]["grad_sqnorm_big"] > 0
    np.testing.assert_allclose(ha[-1]["grad_sqnorm_big"], ha[-1]["grad_norm"] ** 2, rtol=1e-5)


def test_learning_rate_is_state_not_a_compiled_constant():
    """Runs that differ only in lr (or weight decay) share one compiled optimizer update."""
    from lars_jax.train import TrainConfig
    from lars_jax.train.build import learning_rate_schedule, make_optimizer

    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    texts, rates = [], []
    for lr, wd in [(0.1, 1e-4), (3.0, 5e-4)]:
        cfg = TrainConfig(model="mlp1", optimizer="lars", learning_rate=lr, weight_decay=wd,
                          batch_size=512, base_batch_size=256, warmup_epochs=1.0, epochs=4,
                          schedule="cosine", warmup_start="base")
        tx, lr_fn = make_optimizer(cfg, 10, 40)
        state = tx.init(params)
        update = jax.jit(tx.update)  # eagerly, every primitive of the update compiles alone
        texts.append(update.lower(params, state, params).as_text())
        sched = learning_rate_schedule(cfg, 10, 40)
        for t in range(0, 40, 7):  # the logged rate is the configured schedule
            _, state = update(params, state, params)
            got = float(lr_fn(state))
            rates.append((got, float(sched(t))))
            for _ in range(6):
                _, state = update(params, state, params)
    assert texts[0] == texts[1]
    got, want = np.array(rates).T
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert isinstance(state.hyperparams["base_learning_rate"], jax.Array)
