"""End-to-end tests of the host-streaming input path on the real imagenet2012 builder.

The TFDS `imagenet2012` builder is prepared from synthesized tars (tiny random JPEGs, two
classes) once per module; training runs a one-layer MLP with BatchNorm for a few steps
(compiled in each launched process, which a ResNet made the file's main cost; convolutions
on this input path are trained by tests/test_mlperf.py's end-to-end run). The expectations
are independent of the pipeline under test: the batches `train()` consumes are compared
with `host_batches` read directly (the documented pure function of (seed, step)), a run
interrupted by SIGKILL and resumed is compared bitwise with an uninterrupted one, and the
1- and 8-device runs are compared with each other.

Across processes (issue 28): two local processes of 2 CPU devices each (`jax.distributed`
with a localhost coordinator, gloo collectives) are launched with the documented
``lars-jax train --coordinator-address ... --num-processes 2 --process-id P`` and compared
with one process of 4 devices: what each process fed (the pipeline's own input log: record
numbers, labels, image hashes), the losses (jit and pmap), a SIGKILL of both processes and
a restart (bitwise), and a resume by one process of the two's checkpoint. The launches run
once per module and are shared by the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("PIL")

from _synthetic_imagenet import random_jpeg, tar_bytes  # noqa: E402

from lars_jax import data  # noqa: E402
from lars_jax.train import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNSETS = ["n01440764", "n01443537"]  # classes 0 and 1 of TFDS's imagenet2012 labels
NUM_TRAIN = 32
NUM_VAL = 8




@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory) -> Path:
    """A prepared TFDS imagenet2012 of 32 training and 8 validation tiny JPEGs."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    manual = root / "manual"
    manual.mkdir()
    per_class = NUM_TRAIN // len(SYNSETS)
    train = {f"{s}.tar": tar_bytes({f"{s}_{i}.JPEG": random_jpeg(rng, 12 + i % 5, 14 + i % 3)
                                     for i in range(per_class)}) for s in SYNSETS}
    (manual / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(train))
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": random_jpeg(rng, 13, 15) for i in range(1, NUM_VAL + 1)}
    (manual / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    data.prepare_imagenet(root / "tfds", manual_dir=manual)
    return root / "tfds"


def _config(data_dir: Path, workdir: Path, **kw) -> TrainConfig:
    base = dict(dataset="imagenet2012", data_dir=str(data_dir), image_size=8, model="mlp1",
                width=0.25, batch_size=8, epochs=1.0, warmup_epochs=0.0, dtype="float32",
                eval_batch_size=8, log_every_steps=1, checkpoint_every_steps=0, plot=False,
                progress=False, input_threads=2, workdir=str(workdir), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_auto_streams_imagenet_and_device_path_is_refused():
    assert TrainConfig(dataset="imagenet2012").validate().input_pipeline == "auto"
    with pytest.raises(ValueError, match="input_pipeline"):
        TrainConfig(dataset="imagenet2012", input_pipeline="device").validate()
    with pytest.raises(ValueError, match="image_size"):
        TrainConfig(dataset="imagenet2012", image_size=0).validate()
    with pytest.raises(ValueError, match="image_size"):
        TrainConfig(dataset="cifar10", image_size=32).validate()

    assert TrainConfig(dataset="imagenet2012").uses_host_input()
    assert not TrainConfig(dataset="fashion_mnist").uses_host_input()
    assert TrainConfig(dataset="fashion_mnist", input_pipeline="host").uses_host_input()


def test_streaming_batches_equal_host_batches_and_restart_anywhere(imagenet_dir, tmp_path):
    from lars_jax.train import parallel
    from lars_jax.train.input_pipeline import StreamingInput

    config = _config(imagenet_dir, tmp_path)
    stream = StreamingInput(config, parallel.make_mesh(1))
    assert (stream.num_train, stream.num_test, stream.image_shape) == (NUM_TRAIN, NUM_VAL,
                                                                      (8, 8, 3))
    try:
        # Six steps = 1.5 epochs of 4 steps: crosses an epoch boundary.
        got = [jax.device_get(stream.batch(s)) for s in range(6)]
        again = jax.device_get(stream.batch(2))  # out of order: the reader restarts at 2
    finally:
        stream.close()
    want = list(data.host_batches("imagenet2012", "train", 8, seed=3, num_steps=6,
                                  image_size=8, data_dir=imagenet_dir, num_threads=1))
    for (x, y), w in zip(got, want, strict=True):
        np.testing.assert_array_equal(x, w["image"])
        np.testing.assert_array_equal(y, w["label"])
    np.testing.assert_array_equal(again[0], want[2]["image"])
    # Each epoch is a permutation: 4 steps x 8 = every example once, 16 per class.
    epoch_labels = np.concatenate([y for _, y in got[:4]])
    assert np.bincount(epoch_labels).tolist() == [16, 16]
    # Random-resized crops: the same example gets different crops in different epochs.
    assert not np.array_equal(got[0][0], got[4][0])
    # Subsets are TFDS split slices.
    small = StreamingInput(config.replace(train_subset=16, test_subset=3),
                           parallel.make_mesh(1))
    assert (small.num_train, small.num_test) == (16, 3)


def test_host_input_refuses_several_steps_per_call(imagenet_dir, tmp_path):
    from lars_jax.train.build import build

    with pytest.raises(ValueError, match="steps_per_call"):
        build(_config(imagenet_dir, tmp_path, steps_per_call=2, num_devices=1))


def _cli_train(args: list[str], devices: int, env_extra: dict[str, str] | None = None
               ) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "lars_jax.runs.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _args(data_dir: Path, workdir: Path, **kw) -> list[str]:
    c = _config(data_dir, workdir, **kw)
    out = []
    for name in ("dataset", "data_dir", "image_size", "model", "width", "batch_size",
                 "epochs", "warmup_epochs", "dtype", "eval_batch_size", "log_every_steps",
                 "checkpoint_every_steps", "input_threads", "workdir", "seed"):
        out += [f"--{name.replace('_', '-')}", str(getattr(c, name))]
    return out + ["--no-plot", "--no-progress"]


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cli_trains_imagenet2012_streaming_on_1_and_8_devices(imagenet_dir, tmp_path):
    """`lars-jax train --dataset imagenet2012` streams and trains; the global batch of a step
    does not depend on the device count, so with bn_span='global' in float32 the 1- and
    8-device runs agree up to reduction order."""
    runs = {}
    for devices in (1, 8):
        work = tmp_path / f"run{devices}"
        proc = _cli_train(_args(imagenet_dir, work, epochs=2.0) + ["--bn-span", "global"],
                          devices)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        summary = json.loads((work / "summary.json").read_text())
        assert summary["num_devices"] == devices
        assert summary["steps"] == 8  # 2 epochs of 32 // 8
        assert summary["config"]["input_pipeline"] == "auto"
        # Evaluated over the 8 validation images: the accuracy is a multiple of 1/8.
        correct = summary["test_accuracy"] * NUM_VAL
        assert correct == pytest.approx(round(correct), abs=1e-6)
        losses = [r["loss"] for r in _metrics(work) if r["kind"] == "train"]
        assert len(losses) == 8 and np.all(np.isfinite(losses))
        # A 1000-way head at initialisation: the first loss is near log(1000).
        assert abs(losses[0] - np.log(1000)) < 1.0
        runs[devices] = losses
    np.testing.assert_allclose(runs[1], runs[8], rtol=1e-4)


_RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from lars_jax.train import TrainConfig
    from lars_jax.train import loop
    from lars_jax.train.input_pipeline import StreamingInput
    import json
    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    kill_after = int(sys.argv[2])
    batch = StreamingInput.batch
    def recording(self, step):
        x, y = batch(self, step)
        with open(sys.argv[3], "a") as f:
            f.write(json.dumps([step, float(np.asarray(x, np.float64).sum()),
                                np.asarray(y).tolist()]) + "\\n")
        if kill_after and step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # dies before step `kill_after` runs
        return x, y
    StreamingInput.batch = recording
    summary, state = loop.train_with_state(config)
    leaves = [np.asarray(v) for v in __import__("jax").tree.leaves(state.params)]
    np.savez(sys.argv[4], *leaves)
""")


def _resume_run(config: TrainConfig, kill_after: int, log: Path, params: Path
                ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run(
        [sys.executable, "-c", _RESUME_SCRIPT, json.dumps(config.to_dict()), str(kill_after),
         str(log), str(params)], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigkill_and_resume_sees_the_same_batches_and_params(imagenet_dir, tmp_path):
    # 6 steps (1.5 epochs: the resume starts in the middle of epoch 0 and crosses into 1),
    # checkpoints every 2 steps, killed when asked for the batch of step 3 (after the
    # checkpoint at step 2): the restart resumes at step 2.
    straight = _config(imagenet_dir, tmp_path / "straight", epochs=1.5,
                       checkpoint_every_steps=2)
    r = _resume_run(straight, 0, tmp_path / "straight.log", tmp_path / "straight.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    killed = straight.replace(workdir=str(tmp_path / "killed"))
    r = _resume_run(killed, 3, tmp_path / "killed.log", tmp_path / "killed.npz")
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    r = _resume_run(killed, 0, tmp_path / "killed.log", tmp_path / "killed.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming from step 2" in r.stderr

    def rows(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    want = rows(tmp_path / "straight.log")
    got = rows(tmp_path / "killed.log")
    assert [w[0] for w in want] == list(range(6))
    assert [g[0] for g in got] == [0, 1, 2, 3, 2, 3, 4, 5]  # steps 2, 3 read again
    by_step = {}
    for g in got:
        by_step.setdefault(g[0], g)
        assert by_step[g[0]] == g  # a step's batch is the same before and after the kill
    assert [by_step[s] for s in range(6)] == want
    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "killed.npz")
    assert len(a.files) == len(b.files) > 0
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])  # bitwise


# ----------------------------------------------------------------------------- recipe

# claims.md section 1 (Google's MLPerf v0.7 JAX submission): global batch -> base LR, warmup
# epochs, momentum, weight decay, epochs.
_MLPERF_ROWS = {
    "mlperf_resnet50_lars.toml": (3200, 10.0, 5, 0.9, 2e-4, 56),
    "mlperf_resnet50_lars_16k.toml": (16384, 25.0, 5, 0.9, 2e-4, 56),
    "mlperf_resnet50_lars_32k.toml": (32768, 29.0, 18, 0.929, 1e-4, 64),
    "mlperf_resnet50_lars_64k.toml": (65536, 23.08, 33, 0.9537, 1e-4, 92),
}


@pytest.mark.parametrize("name", sorted(_MLPERF_ROWS))
def test_mlperf_recipe_files_load_validate_and_match_the_table(name):
    from lars_jax.runs.cli import resolve_config
    from lars_jax.train.build import learning_rate_schedule

    assert sorted(p.name for p in (ROOT / "configs").glob("mlperf_*.toml")) == sorted(
        _MLPERF_ROWS)
    config, _ = resolve_config(TrainConfig, str(ROOT / "configs" / name), {})
    batch, lr, warmup, momentum, wd, epochs = _MLPERF_ROWS[name]
    config.validate(device_count=8)
    assert (config.model, config.dataset, config.optimizer) == ("resnet50", "imagenet2012",
                                                                "lars")
    assert (config.batch_size, config.momentum, config.weight_decay, config.epochs,
            config.warmup_epochs) == (batch, momentum, wd, epochs, warmup)
    assert (config.label_smoothing, config.trust_coefficient, config.image_size) == (
        0.1, 0.001, 224)
    assert config.micro_batch_size(8) >= 64  # BN over >= 64 examples on 8 devices
    # The schedule: linear from 0 to the base LR over the warmup, then poly2 to 1e-4.
    spe = 1_281_167 // batch
    total = round(epochs * spe)
    w = round(warmup * spe)
    sched = learning_rate_schedule(config, spe, total)
    assert float(sched(0)) == pytest.approx(0.0, abs=1e-6)
    assert float(sched(w // 2)) == pytest.approx(lr * (w // 2) / w, rel=1e-4)
    assert float(sched(w)) == pytest.approx(lr, rel=1e-5)
    mid = w + (total - w) // 2
    frac = 1 - (mid - w) / (total - w)
    assert float(sched(mid)) == pytest.approx(1e-4 + (lr - 1e-4) * frac**2, rel=1e-4)
    assert float(sched(total)) == pytest.approx(1e-4, rel=1e-3)


# ----------------------------------------------------------------------------- processes

# Each process of a launch runs `lars-jax train` (`lars_jax.runs.cli.main`) with two test
# hooks: SIGKILL of itself when asked for the batch of step $KILL_AT (after the checkpoint
# before it), and, at the end, its final parameters and BatchNorm statistics in $PARAMS_OUT
# (process 0). The example ids each process feeds come from the pipeline's own debug log
# ($LARS_JAX_INPUT_LOG).
_PROCESS_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax
    import numpy as np
    import lars_jax.train
    from lars_jax.runs import cli
    from lars_jax.train.input_pipeline import StreamingInput

    kill_at = int(os.environ["KILL_AT"])
    batch = StreamingInput.batch
    def batch_or_die(self, step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return batch(self, step)
    StreamingInput.batch = batch_or_die
    from lars_jax.train.loop import train_with_state
    def train_and_save(config):
        summary, state = train_with_state(config)
        if jax.process_index() == 0:
            leaves = jax.tree.leaves((state.params, state.batch_stats))
            np.savez(os.environ["PARAMS_OUT"], *[np.asarray(x.addressable_data(0))
                                                  for x in leaves])
        return summary
    lars_jax.train.train = train_and_save
    sys.exit(cli.main(sys.argv[1:]))
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(args: list[str], out: Path, *, processes: int, devices: int, kill_at: int = -1
            ) -> list[subprocess.Popen]:
    """`processes` processes of `devices` CPU devices each, one `lars-jax train` run; their
    output in ``<out>/stdout<p>.txt``, their input logs in `out`, the params in
    ``<out>/params.npz``."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               LARS_JAX_INPUT_LOG=str(out), KILL_AT=str(kill_at),
               PARAMS_OUT=str(out / "params.npz"))
    multi = []
    if processes > 1:
        multi = ["--coordinator-address", f"localhost:{_free_port()}",
                 "--num-processes", str(processes)]
        # No persistent compilation cache: JAX writes its entries from process 0 only, so
        # a rerun's process 0 would load its programs while process 1 compiles them, and
        # gloo gives up when they then reach the first collective more than 30 s apart.
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    procs = []
    for p in range(processes):
        with open(out / f"stdout{p}.txt", "w") as log:
            flags = multi + ["--process-id", str(p)] if multi else []
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _PROCESS_SCRIPT, "train", *args, *flags], env=env,
                stdout=log, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen], out: Path, returncode: int = 0) -> str:
    """Waits for all; asserts each exits with `returncode`; returns process 0's output."""
    try:
        for proc in procs:
            proc.wait(timeout=600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    texts = [(out / f"stdout{p}.txt").read_text() for p in range(len(procs))]
    for proc, text in zip(procs, texts, strict=True):
        assert proc.returncode == returncode, text[-3000:]
    return texts[0]


def _fed(out: Path, processes: int) -> dict[int, list[dict]]:
    """step -> the input-log rows of each process (in process order), last feed of a step."""
    steps: dict[int, list[dict]] = {}
    for p in range(processes):
        for line in (out / f"input-process{p}.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert row["process"] == p
            steps.setdefault(row["step"], [None] * processes)[p] = row
    return steps


def _assembled(rows: list[dict]) -> dict[str, list]:
    """The global batch of a step, assembled from the processes' rows in process order."""
    return {k: sum((r[k] for r in rows), []) for k in ("index", "label", "sha1")}


def _train_losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _metrics(workdir) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def two_process_runs(imagenet_dir, tmp_path_factory) -> dict[str, Path]:
    """The launches the multi-process tests check, each run once (6 steps, 1.5 epochs;
    4 devices in all; checkpoints every 2 steps): two processes of 2 devices with jit
    ("jit2") and with pmap ("pmap2"); one process of 4 devices ("one"); two processes
    killed with SIGKILL when asked for step 3, then restarted as two in the same folder
    ("killed"), and, from a copy of the killed run's workdir, as one process of 4 devices
    ("as_one"). Each folder holds the input logs, the outputs and the workdir ``work``."""
    import shutil

    root = tmp_path_factory.mktemp("processes")
    outs = {name: root / name for name in ("jit2", "pmap2", "one", "killed", "as_one")}
    args = lambda name, *extra: [*_args(imagenet_dir, outs[name] / "work", epochs=1.5,
                                        checkpoint_every_steps=2), "--bn-span", "global",
                                 *extra]
    # One launch at a time: the gloo collectives of CPU processes give up when the
    # processes of a launch reach a new collective more than 30 s apart, which other
    # launches beside them on a small shared machine can cause.
    for name, processes, devices, kill_at, code, extra in [
            ("jit2", 2, 2, -1, 0, ()), ("one", 1, 4, -1, 0, ()),
            ("pmap2", 2, 2, -1, 0, ("--parallel", "pmap")),
            ("killed", 2, 2, 3, -signal.SIGKILL, ())]:
        procs = _launch(args(name, *extra), outs[name], processes=processes, devices=devices,
                        kill_at=kill_at)
        _wait(procs, outs[name], code)
    shutil.copytree(outs["killed"] / "work", outs["as_one"] / "work")
    for name, processes, devices in [("killed", 2, 2), ("as_one", 1, 4)]:
        text = _wait(_launch(args(name), outs[name], processes=processes, devices=devices),
                     outs[name])
        assert "resuming from step 2" in text, text[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_read_each_example_once_and_build_the_one_process_batch(
        two_process_runs, imagenet_dir):
    jit2, pmap2, one = (_fed(two_process_runs[n], p) for n, p in
                        (("jit2", 2), ("pmap2", 2), ("one", 1)))
    assert sorted(jit2) == sorted(pmap2) == sorted(one) == list(range(6))
    src = data.host._data_source("imagenet2012", "train", imagenet_dir)
    names = [src[i]["file_name"] for i in range(NUM_TRAIN)]
    for s in range(6):
        rows = jit2[s]
        assert [len(r["index"]) for r in rows] == [4, 4]  # each process its half
        batch = _assembled(rows)
        # The global batch equals one process's, crops included, on both parallel paths.
        assert batch == _assembled(one[s]) == _assembled(pmap2[s])
        # Labels are those of the records read (read here from the TFDS source itself).
        assert batch["label"] == [int(src[i]["label"]) for i in batch["index"]]
    # Epoch 0 (steps 0-3): every one of the 32 files exactly once across the processes.
    epoch = [names[i] for s in range(4) for r in jit2[s] for i in r["index"]]
    assert len(epoch) == NUM_TRAIN and len(set(epoch)) == NUM_TRAIN
    # Epoch 1 starts another permutation.
    assert _assembled(jit2[4])["index"] != _assembled(jit2[0])["index"]


@pytest.mark.slow
def test_two_process_losses_equal_one_process_for_jit_and_pmap(two_process_runs):
    one = _train_losses(two_process_runs["one"] / "work")
    assert sorted(one) == list(range(1, 7))
    for name in ("jit2", "pmap2"):
        got = _train_losses(two_process_runs[name] / "work")
        assert sorted(got) == sorted(one)
        np.testing.assert_allclose([got[s] for s in one], list(one.values()), rtol=1e-6,
                                   err_msg=name)
        summary = json.loads((two_process_runs[name] / "work" / "summary.json").read_text())
        assert (summary["num_processes"], summary["num_devices"]) == (2, 4)


@pytest.mark.slow
def test_sigkill_of_both_processes_and_restart_is_bitwise_the_uninterrupted_run(
        two_process_runs):
    killed, straight = two_process_runs["killed"], two_process_runs["jit2"]
    # The killed run fed steps 0-2, the restart 2-5; a step fed twice got the same batch.
    for p in (0, 1):
        rows = [json.loads(line) for line in
                (killed / f"input-process{p}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2, 2, 3, 4, 5]
        assert rows[2] == rows[3]
    assert _fed(killed, 2) == _fed(straight, 2)
    assert _train_losses(killed / "work") == _train_losses(straight / "work")  # bitwise
    a, b = np.load(straight / "params.npz"), np.load(killed / "params.npz")
    assert len(a.files) == len(b.files) > 0
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])  # bitwise


@pytest.mark.slow
def test_resume_with_another_process_count_reads_the_same_batches(two_process_runs):
    """2 -> 1 processes is exact: the global batch of a step does not depend on the number
    of processes, so the one process reads from the checkpoint step on exactly the batches
    the two would have read; the numbers then differ from the two-process run only by the
    rounding of the cross-process reductions."""
    as_one, straight = _fed(two_process_runs["as_one"], 1), _fed(two_process_runs["jit2"], 2)
    assert sorted(as_one) == [2, 3, 4, 5]
    for s in as_one:
        assert _assembled(as_one[s]) == _assembled(straight[s])
    got = _train_losses(two_process_runs["as_one"] / "work")
    want = _train_losses(two_process_runs["jit2"] / "work")
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-6)
    a = np.load(two_process_runs["jit2"] / "params.npz")
    b = np.load(two_process_runs["as_one"] / "params.npz")
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_a_mesh_that_leaves_a_process_without_its_rows_is_refused(imagenet_dir, tmp_path):
    # --num-devices 2 of the 4: the mesh holds process 0's two devices only, so process 1
    # would feed rows no device holds (and process 0 only half of its rows).
    procs = _launch(_args(imagenet_dir, tmp_path / "work") + ["--num-devices", "2"], tmp_path,
                    processes=2, devices=2)
    text = _wait(procs, tmp_path, returncode=2)
    errors = [line for line in text.splitlines() if line.startswith("lars-jax train: error")]
    assert len(errors) == 1 and "TrainConfig.num_devices=2" in errors[0], text[-3000:]
    assert "contiguous share" in errors[0]
