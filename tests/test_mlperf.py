"""MLPerf mode (issue 29): the reference's step counting and learning rate, the kept and
padded remainder batch, the stop at the target accuracy, and an MLLOG file that the
`mlperf_logging` compliance checker accepts.

Expected values come from outside the code under test: the step counts and rates are the
MLPerf reference's formulas (mlcommons/training image_classification/tensorflow2:
``common.get_num_train_iterations`` with the remainder kept, ``lars_util.
PolynomialDecayWithWarmup``) evaluated by hand here, Google's v0.7 totals (22,428 and 1,817
steps) are the figures of its ``train.py``; the padded batch is compared with the same
examples unpadded through the ordinary (unmasked) step; the log is judged by MLCommons'
own checker.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax.data.host import _pad_spread
from lars_jax.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_TRAIN = 1_281_167


# ----------------------------------------------------------------------------- steps, lr


def _reference_lr(step: float, base: float, warmup: float, decay: float,
                  end: float = 1e-4) -> float:
    """lars_util.PolynomialDecayWithWarmup, written out: warmup from 0, then poly2."""
    if step <= warmup:
        return base * step / warmup
    s = min(step - warmup, decay)
    return end + (base - end) * (1 - s / decay) ** 2


@pytest.mark.parametrize("name, spe, total, warmup, decay, base", [
    # ceil(1,281,167 / 3,200) = 401 (400 full batches + 1,167); 56 epochs; 5 warmup epochs
    ("mlperf_resnet50_lars.toml", 401, 56 * 401, 5 * 401, 56 * 401 - 5 * 401 + 1, 10.0),
    # ceil(1,281,167 / 65,536) = 20 (19 full + 35,983); 92 epochs; 33 warmup epochs
    ("mlperf_resnet50_lars_64k.toml", 20, 92 * 20, 33 * 20, 92 * 20 - 33 * 20 + 1, 23.08),
])
def test_recipes_in_mlperf_mode_count_steps_and_rates_as_the_reference(
        name, spe, total, warmup, decay, base):
    from lars_jax.runs.cli import resolve_config
    from lars_jax.train.build import learning_rate_schedule

    config, _ = resolve_config(TrainConfig, str(ROOT / "configs" / name), {})
    config = config.replace(mlperf=True).validate(device_count=8)
    assert config.run_steps(IMAGENET_TRAIN) == (spe, total)
    sched = learning_rate_schedule(config, spe, total)
    for step in (0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, warmup + decay // 3,
                 total - 2, total - 1):
        want = _reference_lr(step, base, warmup, decay)
        assert float(sched(step)) == pytest.approx(want, rel=1e-4, abs=1e-7), step  # float32
    # the last step's rate is still above end_lr: the decay ends one step after the run
    assert float(sched(total - 1)) > 1e-4 + 1e-3 * (2 / decay) ** 2 * base
    # outside the mode: floor steps per epoch, end_lr reached at the end of the run
    plain = config.replace(mlperf=False)
    assert plain.run_steps(IMAGENET_TRAIN) == (IMAGENET_TRAIN // config.batch_size,
                                               round(config.epochs) * (IMAGENET_TRAIN
                                                                       // config.batch_size))


def test_step_count_functions_give_the_reference_and_googles_totals():
    # Google's v0.7 JAX submission: ceil per 4-epoch block, 22,428 (batch 3,200, 56 epochs)
    # and 1,817 (batch 65,536, 92 epochs) steps
    assert lars_jax.mlperf_total_steps(IMAGENET_TRAIN, 3200, 56, epochs_per_round=4) == 22_428
    assert lars_jax.mlperf_total_steps(IMAGENET_TRAIN, 65536, 92, epochs_per_round=4) == 1_817
    assert lars_jax.mlperf_total_steps(IMAGENET_TRAIN, 3200, 56) == 22_456
    assert lars_jax.mlperf_total_steps(IMAGENET_TRAIN, 65536, 92) == 1_840
    assert lars_jax.mlperf_total_steps(10, 5, 3) == 6  # no remainder: nothing added
    assert lars_jax.mlperf_decay_steps(1840, 660) == 1181
    with pytest.raises(ValueError, match="epochs"):
        lars_jax.mlperf_total_steps(100, 8, 6, epochs_per_round=4)
    with pytest.raises(ValueError, match="warmup_steps"):
        lars_jax.mlperf_decay_steps(10, 10)
    with pytest.raises(ValueError, match="decay_steps"):
        lars_jax.mlperf_lars_schedule(1.0, 1, 5, decay_steps=0)


def test_default_job_keeps_its_step_count_and_schedule():
    from lars_jax.train.build import learning_rate_schedule

    config = TrainConfig().validate()
    assert not config.mlperf
    # 60,000 Fashion-MNIST images, batch 64: 937 steps per epoch, 2.25 epochs
    assert config.run_steps(60_000) == (937, 2108)
    sched = learning_rate_schedule(config, 937, 2108)
    peak, warm = 0.5 * 64 / 256, 47  # linear scaling; round(0.05 * 937) warmup steps
    for step in (0, 20, 47, 1000, 2107):
        want = (peak * step / warm if step < warm
                else peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / (2108 - warm))))
        assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-8), step


# ----------------------------------------------------------------------------- config


def _mlperf_config(**kw) -> TrainConfig:
    base = dict(dataset="imagenet2012", model="resnet50", mlperf=True, optimizer="lars",
                schedule="mlperf", warmup_epochs=5, epochs=56, batch_size=3200,
                eval_every_epochs=4, end_learning_rate=1e-4, learning_rate=10.0,
                lr_scaling="none", base_batch_size=3200, weight_decay=2e-4,
                label_smoothing=0.1, trust_coefficient=0.001)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("changes, field", [
    (dict(optimizer="sgd"), "optimizer"),
    (dict(schedule="poly2"), "schedule"),
    (dict(eval_every_epochs=2), "eval_every_epochs"),
    (dict(bn_span="global"), "bn_span"),
    (dict(epochs=56.5), "epochs"),
    (dict(warmup_epochs=0.3), "warmup_epochs"),
    (dict(dataset="fashion_mnist", batch_size=64, base_batch_size=64), "input_pipeline"),
    (dict(target_accuracy=0.0), "target_accuracy"),
    (dict(mlperf=False, target_accuracy=0.5, eval_every_epochs=0), "target_accuracy"),
])
def test_mlperf_mode_refuses_what_it_does_not_follow(changes, field):
    _mlperf_config().validate(device_count=8)
    with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
        _mlperf_config(**changes).validate(device_count=8)


def test_mlperf_mode_refuses_a_remainder_smaller_than_the_device_groups():
    # 20 examples, batch 16: a remainder of 4 examples over 8 devices leaves some empty
    config = _mlperf_config(train_subset=20, batch_size=16, base_batch_size=16,
                            warmup_epochs=1)
    config.validate(device_count=4)
    with pytest.raises(ValueError, match="TrainConfig.batch_size=16: MLPerf .* last 4"):
        config.validate(device_count=8)


# ----------------------------------------------------------------------------- padding


def test_pad_spread_puts_the_remainder_round_robin_into_the_groups():
    idx, mask = _pad_spread(np.array([10, 11, 12, 13, 14]), batch_size=8, groups=2)
    # group 0 = rows 0-3 gets examples 0, 2, 4; group 1 = rows 4-7 gets examples 1, 3
    assert mask.tolist() == [True, True, True, False, True, True, False, False]
    assert idx[mask].tolist() == [10, 12, 14, 11, 13]
    full = np.arange(8)
    idx, mask = _pad_spread(full, 8, 4)
    assert idx.tolist() == full.tolist() and mask.all()


class _ConvBNNet(nn.Module):
    """Conv -> BatchNorm (4-D) -> relu -> mean pool -> Dense -> BatchNorm (2-D) -> Dense: both
    ranks of BatchNorm input the ResNets and MLPs give the step's mask, cheap to compile."""

    @nn.compact
    def __call__(self, x, train=True):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(6)(x.mean((1, 2))))
        return nn.Dense(3)(nn.relu(x))


def test_padded_remainder_gives_the_gradient_of_the_unpadded_batch_with_batchnorm():
    from lars_jax.train.step import StepOptions, init_train_state, make_train_step

    model = _ConvBNNet()  # the end-to-end run below trains ResNet-8 with padded batches
    x = jax.random.normal(jax.random.key(0), (5, 8, 8, 3))
    y = jnp.array([0, 1, 2, 1, 0])
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x[:1])
    tx = optax.sgd(1.0)  # new params = params - gradient
    state = init_train_state(variables["params"], variables["batch_stats"], tx)
    opts = dict(num_classes=3, label_smoothing=0.1)
    plain = jax.jit(make_train_step(model, tx, StepOptions(**opts)))
    masked = jax.jit(make_train_step(model, tx, StepOptions(**opts, masked=True)))

    want, want_m = plain(state, x, y)  # the 5 real examples, no padding
    got = []
    for seed, scale in ((5, 100.0), (6, 0.0)):  # two different paddings of 3 rows
        junk = scale * jax.random.normal(jax.random.key(seed), (3, 8, 8, 3))
        xp = jnp.concatenate([x[:2], junk[:1], x[2:], junk[1:]])  # padding in between
        yp = jnp.concatenate([y[:2], jnp.array([-1]), y[2:], jnp.array([-1, -1])])
        got.append(masked(state, xp, yp))
    for new, metrics in got:
        for a, b in zip(jax.tree.leaves((want.params, want.batch_stats)),
                        jax.tree.leaves((new.params, new.batch_stats)), strict=True):
            # float32 reordering of the 8-row program: <= 7e-6 here (the same for both
            # paddings), against >= 1e-4 for every leaf the padding reaches unmasked
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
        assert float(metrics["loss"]) == pytest.approx(float(want_m["loss"]), rel=1e-5)
        assert float(metrics["accuracy"]) == pytest.approx(float(want_m["accuracy"]))
    # the padding rows, labelled as real, change the gradient and the statistics (the test
    # can fail): the same masked program, no other compilation
    bad, _ = masked(state, xp, jnp.where(yp < 0, 0, yp))
    for a, b in ((want.params, bad.params), (want.batch_stats, bad.batch_stats)):
        assert not np.allclose(np.asarray(jax.tree.leaves(a)[0]),
                               np.asarray(jax.tree.leaves(b)[0]), atol=1e-4)


# ----------------------------------------------------------------------------- end to end

PER_CLASS = 10  # 8 classes, 80 training images: batch 12 -> 6 full steps + a remainder of 8
NUM_TRAIN, NUM_VAL = 8 * PER_CLASS, 8
SPE = 7  # ceil(80 / 12)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory) -> Path:
    """A prepared TFDS imagenet2012: 8 colour-coded classes x 10 training JPEGs, 8 validation
    JPEGs of which 7 have their class's colour."""
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("PIL")
    from _synthetic_imagenet import learnable_imagenet_tars

    from lars_jax import data

    root = tmp_path_factory.mktemp("imagenet_mlperf")
    manual = root / "manual"
    manual.mkdir()
    train, val = learnable_imagenet_tars(np.random.default_rng(0), PER_CLASS)
    (manual / "ILSVRC2012_img_train.tar").write_bytes(train)
    (manual / "ILSVRC2012_img_val.tar").write_bytes(val)
    data.prepare_imagenet(root / "tfds", manual_dir=manual)
    return root / "tfds"


def test_host_batches_keep_every_example_once_per_epoch(imagenet_dir):
    from collections import Counter

    from lars_jax import data

    b = 12  # 7 steps per epoch, the last with 8 examples and 4 padding rows
    common = dict(seed=1, image_size=8, data_dir=imagenet_dir, num_threads=1, use_grain=False)
    padded = list(data.host_batches("imagenet2012", "train", b, num_steps=2 * SPE,
                                    remainder="pad", pad_groups=2, **common))
    dropped = list(data.host_batches("imagenet2012", "train", b, num_steps=SPE - 1, **common))
    for epoch in (padded[:SPE], padded[SPE:]):
        labels = np.concatenate([e["label"] for e in epoch])
        masks = np.concatenate([e["mask"] for e in epoch])
        assert masks.sum() == NUM_TRAIN and (labels[~masks] == data.host.PAD_LABEL).all()
        assert sorted(Counter(labels[masks].tolist()).values()) == [PER_CLASS] * 8
        last = epoch[-1]  # 4 real rows at the start of each device's half of the batch
        assert last["mask"].tolist() == ([True] * 4 + [False] * 2) * 2
        assert not last["image"][~last["mask"]].any()
    # the full batches are those of the default (remainder dropped) stream
    for a, c in zip(padded[:SPE - 1], dropped, strict=True):
        np.testing.assert_array_equal(a["image"], c["image"])
        np.testing.assert_array_equal(a["label"], c["label"])


def _tiny_run(data_dir: Path, workdir: Path, **kw) -> TrainConfig:
    base = dict(dataset="imagenet2012", data_dir=str(data_dir), image_size=8, model="resnet8",
                width=1.0, batch_size=12, num_devices=2, epochs=16, warmup_epochs=1,
                dtype="float32", eval_batch_size=8, log_every_steps=1,
                checkpoint_every_steps=-1, plot=False, progress=False, input_threads=2,
                workdir=str(workdir), seed=3, mlperf=True, optimizer="lars",
                schedule="mlperf", learning_rate=1.0, base_batch_size=12, lr_scaling="none",
                end_learning_rate=1e-4, weight_decay=1e-4, label_smoothing=0.1,
                trust_coefficient=0.001, eval_every_epochs=4)
    base.update(kw)
    return TrainConfig(**base)


def _mllog(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert all(line.startswith(":::MLLOG {") for line in lines)
    return [json.loads(line[len(":::MLLOG "):]) for line in lines]


def test_tiny_mlperf_run_stops_at_the_target_and_its_log_passes_the_checker(
        imagenet_dir, tmp_path):
    from mlperf_logging.compliance_checker import mlp_compliance

    from lars_jax.train import train

    summary = train(_tiny_run(imagenet_dir, tmp_path / "run"))
    # Evaluations every 4 epochs (28 steps); the run stops at the first one that reaches
    # the rules' 75.9% (7/8 of the images; epoch 8 when written), before its 16 epochs.
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
            if r]
    evals = [(r["step"], r["test_accuracy"]) for r in rows if r["kind"] == "eval"]
    stop = evals[-1][0]
    assert [s for s, _ in evals] == list(range(4 * SPE, stop + 1, 4 * SPE))
    assert all(a < 0.759 for _, a in evals[:-1]) and evals[-1][1] >= 0.759, evals
    assert stop < 16 * SPE and max(r["step"] for r in rows) == stop
    assert summary["steps"] == stop and summary["mlperf_status"] == "success"

    events = _mllog(tmp_path / "run" / "mlperf_log.txt")
    keys = [e["key"] for e in events]
    assert keys[:2] == ["cache_clear", "init_start"]
    assert keys[-6:] == ["epoch_stop", "eval_start", "eval_accuracy", "eval_stop",
                         "block_stop", "run_stop"]
    values = {e["key"]: e["value"] for e in events}
    assert values["lars_opt_learning_rate_decay_steps"] == 16 * SPE - 1 * SPE + 1
    assert (values["train_samples"], values["eval_samples"]) == (NUM_TRAIN, NUM_VAL)
    assert values["global_batch_size"] == 12 and values["seed"] == 3
    epochs = stop // SPE
    assert [e["metadata"]["epoch_num"] for e in events if e["key"] == "epoch_start"] == list(
        range(1, epochs + 1))
    assert events[-1]["metadata"]["status"] == "success"
    logged = [(e["metadata"]["epoch_num"], e["value"]) for e in events
              if e["key"] == "eval_accuracy"]
    assert logged == [(s // SPE, pytest.approx(a)) for s, a in evals]

    # MLCommons' checker, rules of MLPerf Training v4.0 (the last with ResNet-50); every
    # rule holds on this tiny run, the quality target included (7/8 of the images).
    checker = mlp_compliance.make_checker("training", "4.0.0", quiet=False, werror=True)
    ok = checker.check_file(str(tmp_path / "run" / "mlperf_log.txt"),
                            "training_4.0.0/common.yaml")
    assert ok, [*checker.overwritable.values(), *checker.not_overwritable]


def test_mllog_blocks_of_a_run_that_misses_the_target(tmp_path):
    """10 epochs of 2 steps: blocks 1-4, 5-8 and 9-10, evaluations at epochs 4, 8 and 10,
    none reaching the target: run_stop "aborted"; the checker then fails exactly the
    quality rule."""
    from mlperf_logging.compliance_checker import mlp_compliance

    from lars_jax.runs import mlperf_log

    config = _mlperf_config(epochs=10, warmup_epochs=1)
    steps = mlperf_log.MlperfSteps(2, 20, 2, lars_jax.mlperf_decay_steps(20, 2))
    log = mlperf_log.MlperfLog(tmp_path, steps, 0.759)
    log.header("8xcpu", mlperf_log.hyperparameters(
        config, steps, peak_lr=10.0, num_train=40, num_eval=10, num_devices=8))
    log.run_start()
    for step in range(1, 21):
        log.step_done(step)
        if step % 8 == 0 or step == 20:
            log.eval_start(step)
            assert not log.evaluated(step, 0.5 + step / 100)
    log.close()
    events = _mllog(tmp_path / "mlperf_log.txt")
    blocks = [(e["key"], e["metadata"]["first_epoch_num"], e["metadata"]["epoch_count"])
              for e in events if e["key"].startswith("block_")]
    assert blocks == [("block_start", 1, 4), ("block_stop", 1, 4), ("block_start", 5, 4),
                      ("block_stop", 5, 4), ("block_start", 9, 2), ("block_stop", 9, 2)]
    assert [e["metadata"]["epoch_num"] for e in events if e["key"] == "eval_accuracy"] == [
        4, 8, 10]
    assert [e["metadata"]["epoch_num"] for e in events if e["key"] == "epoch_stop"] == list(
        range(1, 11))
    assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "aborted"
    checker = mlp_compliance.make_checker("training", "4.0.0", quiet=False, werror=True)
    assert not checker.check_file(str(tmp_path / "mlperf_log.txt"),
                                  "training_4.0.0/common.yaml")
    messages = [*checker.overwritable.values(), *checker.not_overwritable]
    assert len(messages) == 1 and messages[0].startswith("Failed checks for eval_accuracy")
