"""Fault injection (issues 17 and 25): each fault on a tiny run, with real files, real
signals, subprocesses and (as root) small tmpfs mounts, and the behaviour asserted after it.
docs/faults.md is the table of these.

In-process runs use `_train_jobs.tiny_data` (256 training images of 12x12, 8 steps per
epoch) with an MLP on one device; the command-line runs (signals, sweeps, disk full) use
the `tiny_fashion_mnist` fixture (tests/conftest.py), a 640-image Fashion-MNIST prepared
here by TFDS's own builder, so that nothing skips on a fresh clone.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _train_jobs import tiny_config, tiny_data
from _xla_env import xla_flags

from lars_jax.runs import cli
from lars_jax.runs.run_files import SUMMARY_FILE

REPO = Path(__file__).resolve().parents[1]


def _cfg(workdir, **kw):
    base = dict(model="mlp1", num_devices=1, epochs=1.0, checkpoint_every_steps=2,
                keep_checkpoints=3, log_every_steps=1, warmup_epochs=0.0)
    base.update(kw)
    return tiny_config(workdir, **base)


def _leaves(state):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def _rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open()]


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"{path}: non-standard JSON constant {name}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _env(devices=1):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                        os.environ.get("PYTHONPATH", "")]),
                XLA_FLAGS=xla_flags(devices),
                JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished in-process run of `_cfg` (8 steps, checkpoints at 2, 4, 6, 8; keep 3):
    its folder, summary and final parameters. Tests copy the folder (`finished_copy`)."""
    from lars_jax.train import train_with_state

    folder = tmp_path_factory.mktemp("finished") / "run"
    summary, state = train_with_state(_cfg(folder), data=tiny_data())
    assert summary["status"] == "ok" and summary["steps"] == 8
    assert _strict_json(folder / SUMMARY_FILE) == summary
    return folder, summary, _leaves(state)


@pytest.fixture
def finished_copy(finished, tmp_path):
    """`finished`'s folder copied to `tmp_path` (the run's lock released), its summary
    (as summary.json records it) and its final parameters."""
    folder, _, leaves = finished
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    (tmp_path / ".lock").unlink(missing_ok=True)
    return _strict_json(tmp_path / SUMMARY_FILE), leaves


# ------------------------------------------------------------------ 1: rerun of a finished run


def test_rerunning_a_finished_run_keeps_its_results(tmp_path, capsys, finished_copy):
    """Before: the rerun wrote summary.json with null test_accuracy/test_loss (the same
    after a kill between the last checkpoint and summary.json)."""
    from lars_jax.train import train

    cfg = _cfg(tmp_path)
    first, _ = finished_copy  # the finished run of `cfg`, copied here
    assert first["test_accuracy"] is not None
    again = train(cfg.replace(progress=True), data=tiny_data())  # a cosmetic flag differs
    assert again == first
    out = capsys.readouterr()
    assert "finished: its results are kept" in out.err
    # the folder it was rerun in, not the one summary.json was first written in
    assert f"metrics: {tmp_path / 'metrics.jsonl'}" in out.out
    assert _strict_json(tmp_path / SUMMARY_FILE) == first
    # killed after the last checkpoint, before summary.json: the results are recovered
    rows = _rows(tmp_path)
    (tmp_path / SUMMARY_FILE).unlink()
    recovered = train(cfg, data=tiny_data())
    assert recovered["resumed_from_step"] == 8 and recovered["status"] == "ok"
    # the timings are this rerun's, and the summary says so (item 7 of issue 25; before:
    # the rerun's wall time and throughput were shown as the run's)
    assert first["timed_from_step"] == 0 and recovered["timed_from_step"] == 8
    assert recovered["images_per_s"] is None and recovered["train_time_s"] == 0.0
    from lars_jax.train.loop import format_summary

    assert "(this invocation only: from step 8)" in format_summary(recovered)
    assert "this invocation only" not in format_summary(first)
    for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps"):
        assert recovered[key] == first[key], key
    assert _rows(tmp_path) == rows  # nothing logged twice
    # the same with the final eval row lost too: it is computed again, to the same value
    (tmp_path / SUMMARY_FILE).unlink()
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["kind"] == "train"))
    recomputed = train(cfg, data=tiny_data())
    assert recomputed["test_accuracy"] == first["test_accuracy"]
    assert recomputed["test_loss"] == pytest.approx(first["test_loss"], rel=1e-6)


# ------------------------------------------------------------------ 2: two runs, one workdir


def test_a_second_run_in_a_busy_workdir_is_refused_and_a_dead_holder_does_not_block(
        tmp_path, capsys):
    """Before: both runs went on and metrics.jsonl got every row twice."""
    from lars_jax.train import train
    from lars_jax.train.workdir_lock import WorkdirLock, WorkdirLockedError

    # the holder: another process, forked (a new interpreter would import jax again, ~2 s)
    # that takes the lock and sleeps; it calls nothing of JAX's, so JAX's warning that a
    # fork of its threaded process may deadlock does not apply to it
    ready, told = os.pipe()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        holder = os.fork()
    if holder == 0:  # the child
        try:
            WorkdirLock(tmp_path).acquire()
            os.write(told, b"held\n")
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(told)  # the child's end: a child that died reads as end of file
    try:
        assert os.read(ready, 5) == b"held\n"
        with pytest.raises(WorkdirLockedError, match=f"in use by another run \\(pid "
                           f"{holder} on "):
            train(_cfg(tmp_path), data=tiny_data())
        assert not (tmp_path / "metrics.jsonl").exists()
        rc = cli.main(["train", "--model", "mlp1", "--num-devices", "1", "--train-subset",
                       "64", "--test-subset", "32", "--batch-size", "32", "--no-progress",
                       "--no-plot", "--workdir", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and "WorkdirLockedError" in err[0], err
    finally:
        os.kill(holder, signal.SIGKILL)  # no cleanup; the kernel drops the lock
        os.waitpid(holder, 0)
        os.close(ready)
    summary = train(_cfg(tmp_path), data=tiny_data())
    assert summary["steps"] == 8
    assert [r["step"] for r in _rows(tmp_path) if r["kind"] == "train"] == list(range(1, 9))


# ------------------------------------------------------------------ 3: flipped bytes


def test_a_checkpoint_with_flipped_bytes_is_set_aside_and_the_previous_one_resumes(
        tmp_path, capfd, finished_copy):
    """Before: the corrupt checkpoint was restored (and the run diverged); truncated
    checkpoints printed pages of absl and "Event loop is closed" tracebacks (item 7)."""
    from lars_jax.train import train, train_with_state
    from lars_jax.train.checkpoint import CheckpointError

    cfg = _cfg(tmp_path)
    _, reference = finished_copy  # the finished run of `cfg`, copied here
    newest = tmp_path / "checkpoints" / "8"
    victim = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit; the file still parses
    victim.write_bytes(bytes(data))
    (tmp_path / SUMMARY_FILE).unlink()
    summary, state = train_with_state(cfg, data=tiny_data())
    err = capfd.readouterr().err
    assert "ChecksumMismatch" in err and victim.name in err
    assert summary["resumed_from_step"] == 6
    assert (tmp_path / "checkpoints_bad" / "8").is_dir()
    for a, b in zip(reference, _leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: step 6 + 2 steps again
    # every checkpoint truncated (no checksums: as if written by an older version): one
    # line per checkpoint, then the error, and nothing else
    (tmp_path / SUMMARY_FILE).unlink()
    steps = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    for f in (tmp_path / "checkpoints").rglob("*"):
        if f.name == "lars_jax_sha256.json":
            f.unlink()
        elif f.is_file():
            f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train(cfg, data=tiny_data())
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == len(steps) == 3, lines
    assert all(line.startswith("lars_jax checkpoint: checkpoint at step") for line in lines)


# ------------------------------------------------------------------ 4, 5: signals

def _cli_train_args(workdir, epochs, *extra, data_dir):
    return ["train", "--model", "mlp1", "--train-subset", "512", "--test-subset", "128",
            "--batch-size", "32", "--num-devices", "1", "--epochs", str(epochs),
            "--warmup-epochs", "0", "--no-progress", "--no-plot", "--log-every-steps", "1",
            "--checkpoint-every-steps", "0", "--dtype", "float32", "--workdir", str(workdir),
            "--data-dir", str(data_dir), *extra]


def _cli_train(workdir, epochs, *extra, data_dir):
    args = _cli_train_args(workdir, epochs, *extra, data_dir=data_dir)
    return subprocess.Popen([sys.executable, "-m", "lars_jax.runs.cli", *args], env=_env(),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_ctrl_c_before_the_first_step_exits_130_with_one_line(tmp_path, tiny_fashion_mnist):
    """Before: SIGSEGV in 8 of 15 tries, ignored in 2."""
    proc = _cli_train(tmp_path, 1, data_dir=tiny_fashion_mnist)
    # the lock is taken after the checks, before data loading and compilation: the signal
    # arrives during the setup, before the first step
    while not (tmp_path / ".lock").exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Segmentation" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("lars-jax train: SIGINT before training started: nothing to save",
                            "lars-jax train: SIGINT at step 0: no checkpoint yet")), err
    assert not (tmp_path / SUMMARY_FILE).exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_lars_jax_imports_exits_with_one_line(tmp_path, signum):
    """The console script's entry point (lars_jax_launcher) records a signal that arrives
    while jax and flax are being imported. Before: Python's own KeyboardInterrupt
    traceback and exit 1 for a Ctrl-C in the first ~3 s, and a SIGTERM there killed the
    process with no message.

    The signal is sent once jaxlib is mapped into the process (so during the import of
    lars_jax, or at the latest before training: both must give the same line)."""
    code = ("import sys; from lars_jax_launcher import main; "
            f"sys.exit(main(['train', '--workdir', {str(tmp_path)!r}, '--no-progress']))")
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.time() + 120
    while "jaxlib" not in (maps.read_text() if maps.exists() else ""):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(
        f"lars-jax train: {name} before training started: nothing to save"), err
    assert not (tmp_path / SUMMARY_FILE).exists()


def test_sigterm_saves_the_current_step_and_the_same_command_resumes_bitwise(
        tmp_path, tiny_fashion_mnist):
    """Before: exit -15, no message, no checkpoint."""
    epochs = 8  # 128 steps of 32: stopped after 3, long enough for a late signal
    victim = _cli_train(tmp_path / "victim", epochs, data_dir=tiny_fashion_mnist)
    metrics = tmp_path / "victim" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert victim.poll() is None and time.time() < deadline, victim.communicate()
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lars-jax train: SIGTERM at step "), err
    step = int(last.split("SIGTERM at step ")[1].split(":")[0])
    assert 3 <= step < 128 and "Traceback" not in err
    assert f"checkpoint of step {step} saved" in last
    assert (tmp_path / "victim" / "checkpoints" / str(step)).is_dir()
    assert not (tmp_path / "victim" / SUMMARY_FILE).exists()
    resumed = _cli_train(tmp_path / "victim", epochs, data_dir=tiny_fashion_mnist)
    # the uninterrupted run of the same command, here while the resumed one trains (one
    # launch fewer; the same one-device program)
    assert cli.main(_cli_train_args(tmp_path / "ref", epochs, data_dir=tiny_fashion_mnist)) == 0
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from step {step}" in err
    from test_train_loop import _final_params

    s_ref, p_ref = _final_params(tmp_path / "ref")
    s_res, p_res = _final_params(tmp_path / "victim")
    assert s_ref == s_res == 128
    for a, b in zip(p_ref, p_res, strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise


def _wait_for_rows(proc, metrics, rows):
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= rows):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)


def _checkpoints(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_sighup_saves_the_current_step_and_exits_129_even_with_the_terminal_gone(
        tmp_path, tiny_fashion_mnist):
    """A closed terminal or ssh session. Before: exit 129 by the default action, no
    message, no checkpoint. The second time the run's stderr is a pipe nobody reads any
    more (as a hung-up terminal: writes fail): it still checkpoints and exits 129."""
    run = lambda: _cli_train(tmp_path, 8, data_dir=tiny_fashion_mnist)  # 128 steps
    proc = run()
    _wait_for_rows(proc, tmp_path / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lars-jax train: SIGHUP at step ") and "Traceback" not in err, err
    step = int(last.split("SIGHUP at step ")[1].split(":")[0])
    assert f"checkpoint of step {step} saved" in last and _checkpoints(tmp_path) == [step]
    proc = run()
    _wait_for_rows(proc, tmp_path / "metrics.jsonl", step + 3)
    proc.stderr.close()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 129
    later = _checkpoints(tmp_path)
    assert len(later) == 2 and later[0] == step < later[1] < 128
    assert not (tmp_path / SUMMARY_FILE).exists()


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


TWO_PROCESS_EPOCHS = 4  # 64 steps of 32: stopped after 3, with room for a late signal


def _two_process_train(logs, workdir, data_dir):
    """Both processes of a run on 2 CPU processes x 1 device (localhost coordinator);
    output to files, not pipes (a full pipe would block one process, and with it the
    other's collectives). Every step waits for the other process's gradients (gloo), so
    the run is shorter than the one-process signal tests'."""
    port, procs = _free_port(), []
    for pid, log in enumerate(logs):
        args = ["train", "--model", "mlp1", "--dataset", "fashion_mnist", "--data-dir",
                str(data_dir), "--train-subset", "512", "--test-subset", "128",
                "--batch-size", "32", "--epochs", str(TWO_PROCESS_EPOCHS), "--warmup-epochs", "0",
                "--no-progress", "--no-plot", "--log-every-steps", "1",
                "--checkpoint-every-steps", "0", "--dtype", "float32", "--workdir",
                str(workdir), "--num-devices", "2", "--coordinator-address",
                f"localhost:{port}", "--num-processes", "2", "--process-id", str(pid)]
        with open(log, "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "lars_jax.runs.cli", *args],
                                          env=_env(1), cwd=REPO, stdout=out,
                                          stderr=subprocess.STDOUT))
    return procs


def test_sigterm_to_a_two_process_run_checkpoints_the_same_step_on_both_and_exits_143(
        tmp_path, tiny_fashion_mnist):
    """JAX's preemption notifier takes SIGTERM in multi-process runs; the loop asks JAX's
    preemption sync point at every iteration, so both processes checkpoint one step
    together. Before: both logged only `SIGTERM caught`, trained to the end and exited 0.
    The rerun of the same two commands resumes there and finishes."""
    workdir = tmp_path / "run"
    logs = [tmp_path / f"p{pid}.log" for pid in (0, 1)]
    procs = _two_process_train(logs, workdir, tiny_fashion_mnist)
    try:
        _wait_for_rows(procs[0], workdir / "metrics.jsonl", 3)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [143, 143], texts
    last = [text.strip().splitlines()[-1] for text in texts]
    steps = {int(line.split("SIGTERM at step ")[1].split(":")[0]) for line in last
             if line.startswith("lars-jax train: SIGTERM at step ")}
    assert len(steps) == 1, last  # the same step on both
    step = steps.pop()
    total = 16 * TWO_PROCESS_EPOCHS
    assert 3 <= step < total and all(f"checkpoint of step {step} saved" in x for x in last), \
        last
    assert _checkpoints(workdir) == [step] and not (workdir / SUMMARY_FILE).exists()
    assert not any("Traceback" in text for text in texts)
    procs = _two_process_train(logs, workdir, tiny_fashion_mnist)
    codes = [proc.wait(timeout=300) for proc in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    assert f"resuming from step {step}" in texts[0]
    summary = _strict_json(workdir / SUMMARY_FILE)
    assert summary["steps"] == total and summary["resumed_from_step"] == step
    assert summary["num_processes"] == 2


# ------------------------------------------------------------------ 6: one-line errors


def _cli(capsys, *argv):
    rc = cli.main(["train", "--model", "mlp1", "--train-subset", "64", "--test-subset", "32",
                   "--batch-size", "32", "--no-progress", "--no-plot", *argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_impossible_devices_and_unwritable_folders_are_one_line_errors(tmp_path, capsys):
    """Before: tracebacks after loading the data."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    wd = tmp_path / "wd"
    rc, err = _cli(capsys, "--num-devices", "4096", "--batch-size", "4096", "--train-subset",
                   "4096", "--workdir", str(wd))
    assert rc == 2 and len(err) == 1 and "num_devices=4096: only" in err[0], err
    rc, err = _cli(capsys, "--workdir", str(a_file / "run"))
    assert rc == 2 and len(err) == 1 and "TrainConfig.workdir=" in err[0], err
    assert "is not a directory" in err[0]
    rc, err = _cli(capsys, "--workdir", str(wd), "--data-dir", str(a_file / "data"))
    assert rc == 2 and len(err) == 1 and "TrainConfig.data_dir=" in err[0], err
    assert not wd.exists()


def test_config_edges_are_one_line_errors_before_any_compute(tmp_path, capsys):
    """Before: a config file of garbage bytes gave an error without the file's name;
    `--seed 1e20` and `--learning-rate 1e308` gave 46-line tracebacks; `--train-subset
    100000` was silently capped at 60,000 but recorded as 100,000 (now refused)."""
    garbage = tmp_path / "c.toml"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage")
    cases = [
        (["--config", str(garbage)], f"config file {str(garbage)!r}: not UTF-8 text"),
        (["--seed", "1e20"], "TrainConfig.seed=100000000000000000000: must be in [0, "
                             "4294967296)"),
        (["--learning-rate", "1e308"], "TrainConfig.learning_rate=1e+308: scaled (linear) to "
                                       "batch_size=32 it is inf, above the float32 range"),
        (["--learning-rate", "1e39", "--lr-scaling", "sqrt", "--base-batch-size", "8"],
         "TrainConfig.learning_rate=1e+39: scaled (sqrt) to batch_size=32 it is 2e+39, above "
         "the float32 range"),
        (["--train-subset", "100000"], "TrainConfig.train_subset=100000: above the 60000 "
                                       "training examples of fashion_mnist"),
        (["--test-subset", "10001"], "TrainConfig.test_subset=10001: above the 10000 test "
                                     "examples of fashion_mnist"),
    ]
    for argv, want in cases:
        rc, err = _cli(capsys, "--workdir", str(tmp_path / "wd"), *argv)
        assert rc == 2 and len(err) == 1 and want in err[0], (argv, err)
    assert not (tmp_path / "wd").exists()
    # the edges themselves are accepted: the largest seed, all 60,000 examples
    rc, err = _cli(capsys, "--seed", str(2**32 - 1), "--train-subset", "60000",
                   "--print-config")
    assert rc == 0, err


def test_cifar10_offline_fails_at_once_naming_the_offline_preparation(tmp_path, capsys,
                                                                      monkeypatch):
    """Before: about 207 s of download retries, five tracebacks, .tmp debris. The machine
    is made offline for the test (every new connection refused), so it runs everywhere."""
    import socket

    def offline(*args, **kwargs):
        raise OSError("network is unreachable (the test is offline)")

    monkeypatch.setattr(socket, "create_connection", offline)
    data_dir = tmp_path / "data"
    start = time.monotonic()
    rc, err = _cli(capsys, "--dataset", "cifar10", "--data-dir", str(data_dir),
                   "--workdir", str(tmp_path / "wd"))
    assert rc == 2 and len(err) == 1, err
    assert "prepare_from_archive" in err[0] and "cifar-10-binary.tar.gz" in err[0]
    assert time.monotonic() - start < 60
    assert not (tmp_path / "wd").exists()
    debris = [p for p in data_dir.rglob("*") if "tmp" in p.name or p.is_file()]
    assert debris == []


@pytest.fixture()
def fashion_mnist_copy(tmp_path, tiny_fashion_mnist):
    """A copy of the tiny Fashion-MNIST data dir (prepared records and array cache)."""
    from lars_jax.data.sources import builder

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_fashion_mnist, data_dir)
    return data_dir, Path(builder("fashion_mnist", data_dir).data_dir)


def test_a_truncated_npy_cache_is_rebuilt_and_a_truncated_record_file_named(
        fashion_mnist_copy, capsys):
    from lars_jax.data.sources import DataFileError, load_split

    data_dir, prepared = fashion_mnist_copy
    images, labels = load_split("fashion_mnist", "test[:100]", data_dir)
    cache = next((data_dir / "lars_jax_cache").rglob("test_100__images.npy"))
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    again, again_labels = load_split("fashion_mnist", "test[:100]", data_dir)
    assert "cannot be read" in capsys.readouterr().err
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_labels, labels)
    np.load(cache)  # rewritten whole
    record = next(p for p in prepared.iterdir() if "test.array_record" in p.name)
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    with pytest.raises(DataFileError, match="delete that folder") as e:
        load_split("fashion_mnist", "test", data_dir, cache=False)
    assert str(prepared) in str(e.value)


def test_changed_bytes_in_the_array_cache_are_found_and_decoded_again(fashion_mnist_copy,
                                                                        capsys):
    """Before: a cache with changed bytes was used as it was (test accuracy 0.104 instead
    of 0.798 in the issue's probe, exit 0, no warning)."""
    from lars_jax.data.sources import load_split

    data_dir, _ = fashion_mnist_copy
    cache = next((data_dir / "lars_jax_cache").rglob("test_images.npy"))
    pristine = np.load(cache)  # written by the fixture from the prepared records
    data = bytearray(cache.read_bytes())
    for i in range(len(data) - 500, len(data) - 400):  # pixels; the header still parses
        data[i] ^= 0x5A
    cache.write_bytes(bytes(data))
    assert not np.array_equal(np.load(cache), pristine)
    images, _ = load_split("fashion_mnist", "test", data_dir)
    err = capsys.readouterr().err
    assert "the SHA-256 of test_images.npy differs" in err and str(cache.parent) in err
    np.testing.assert_array_equal(images, pristine)
    np.testing.assert_array_equal(np.load(cache), pristine)  # rewritten
    load_split("fashion_mnist", "test", data_dir)
    assert capsys.readouterr().err == ""  # and trusted again


@pytest.mark.parametrize("bad", [37, -5])
def test_a_label_out_of_range_in_the_cache_is_a_one_line_error_naming_the_file(
        fashion_mnist_copy, capsys, bad):
    """Even with checksums that match (a cache written from bad labels): labels outside
    [0, 10) are refused. Before: accepted (train loss 0.169 next to accuracy 0.255)."""
    from lars_jax.data.sources import DataFileError, load_split

    data_dir, _ = fashion_mnist_copy
    labels_file = next((data_dir / "lars_jax_cache").rglob("train_labels.npy"))
    labels = np.load(labels_file)
    labels[7] = bad
    np.save(labels_file, labels)
    sums_file = labels_file.with_name("train_sha256.json")
    sums = json.loads(sums_file.read_text())
    sums[labels_file.name] = hashlib.sha256(labels_file.read_bytes()).hexdigest()
    sums_file.write_text(json.dumps(sums))
    with pytest.raises(DataFileError, match=f"label {bad} at index 7 is outside \\[0, 10\\)"):
        load_split("fashion_mnist", "train", data_dir)
    rc, err = _cli(capsys, "--dataset", "fashion_mnist", "--data-dir", str(data_dir),
                   "--workdir", str(data_dir.parent / "wd"), "--num-devices", "1")
    assert rc == 2 and len(err) == 1, err
    assert str(labels_file) in err[0] and f"label {bad} at index 7" in err[0]


# ------------------------------------------------------------------ 8, 9: non-finite


def test_the_nonfinite_stop_names_the_step_metrics_jsonl_marks(tmp_path):
    """Before: the message named step N while metrics.jsonl marked N+1 non-finite."""
    from lars_jax.train import train
    from lars_jax.train.loop import NonFiniteError

    cfg = _cfg(tmp_path, optimizer="sgd", learning_rate=1e36, schedule="constant",
               checkpoint_every_steps=1)
    with pytest.raises(NonFiniteError, match=r"at step (\d+)") as e:
        train(cfg, data=tiny_data())
    named = int(e.value.args[0].split("at step ")[1].split(":")[0])
    rows = [r for r in _rows(tmp_path) if r["kind"] == "train"]
    first_bad = next(r["step"] for r in rows if r["finite"] == 0)
    assert named == first_bad
    assert all(r["finite"] == 1 for r in rows if r["step"] < named)
    saved = _strict_json(tmp_path / SUMMARY_FILE)
    assert saved["nonfinite_step"] == named
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():  # NaN/Inf as null
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    assert f"Last good checkpoint: {tmp_path / 'checkpoints' / str(named - 1)}" in str(e.value) \
        or named == 1


def test_skip_policy_stops_a_diverged_run_and_never_applies_an_overflowing_update(tmp_path):
    """Before: 36 of 40 steps skipped still ended status ok; an update that made the
    parameters overflow was applied, then every step skipped, then a TypeError."""
    from lars_jax.train import train, train_with_state
    from lars_jax.train.build import build
    from lars_jax.train.loop import NonFiniteError

    cfg = _cfg(tmp_path / "bounded", optimizer="sgd", learning_rate=1e30,
               lr_scaling="none", nan_policy="skip", checkpoint_every_steps=-1)
    with pytest.raises(NonFiniteError, match=r"1 non-finite steps skipped of 8, more than "
                       r"max_skipped_fraction=0.1"):
        train(cfg, data=tiny_data())
    saved = _strict_json(tmp_path / "bounded" / SUMMARY_FILE)
    assert saved["status"] == "nonfinite" and saved["skipped_steps"] == 1
    # with no bound the run ends: every update overflows, so none is applied, the
    # parameters are the initial ones and the schedule (cosine) never advances
    unbounded = cfg.replace(workdir=str(tmp_path / "unbounded"), max_skipped_fraction=1.0)
    summary, state = train_with_state(unbounded, data=tiny_data())
    assert summary["status"] == "ok" and summary["skipped_steps"] == 8
    for a, b in zip(_leaves(build(unbounded, tiny_data()).state), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = [r for r in _rows(tmp_path / "unbounded") if r["kind"] == "train"]
    rates = {r["lr"] for r in rows}
    assert len(rates) == 1 and rates.pop() == pytest.approx(1e30, rel=1e-6)  # step 0's
    assert all(r["finite"] == 0 for r in rows)
    _strict_json(tmp_path / "unbounded" / SUMMARY_FILE)


def test_the_summary_prints_a_nan_test_loss_as_na():
    from lars_jax.train.loop import format_summary

    text = format_summary({
        "config": {"model": "mlp2", "dataset": "fashion_mnist", "optimizer": "sgd",
                   "batch_size": 64}, "epochs": 1, "steps": 8, "num_devices": 1,
        "test_accuracy": 0.1, "test_loss": None, "wall_time_s": 1.0, "compile_time_s": None,
        "images_per_s": None, "workdir": "w", "skipped_steps": 7})
    assert "test accuracy 0.1000, test loss n/a (NaN or Inf)" in text
    assert "skipped non-finite steps: 7" in text


# ------------------------------------------------------------------ 10: quiet coercions


def test_config_file_strings_for_numbers_are_refused(tmp_path, capsys):
    for line, field in (('batch_size = "64"', "batch_size"),
                        ('learning_rate = "1.5"', "learning_rate"),
                        ('flip = "true"', "flip")):
        path = tmp_path / "c.toml"
        path.write_text(line + "\n")
        rc = cli.main(["train", "--config", str(path), "--print-config"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert f"TrainConfig.{field}=" in err[0] and "not a string" in err[0]
    path.write_text('batch_size = 64\nnum_devices = "none"\n')  # TOML has no null
    assert cli.main(["train", "--config", str(path), "--print-config"]) == 0


def test_a_damaged_metrics_row_before_the_resume_step_is_dropped_with_a_warning(
        tmp_path, capsys):
    from lars_jax.train.metrics import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tra\n{"kind": "train", "step": 3}'
                    '\n{"kind": "train", "step": 4}\n{"kind": "tr')
    writer = MetricsWriter(tmp_path, resume_step=3)
    writer.close()
    err = capsys.readouterr().err
    assert "line(s) 2 not valid JSON rows; dropped" in err
    assert [r["step"] for r in writer.kept_rows] == [1, 3]
    assert (tmp_path / "metrics.jsonl.damaged").read_text().count("\n") == 4
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 3]


def test_a_sweep_run_busy_in_another_process_is_not_recorded_and_a_rerun_keeps_results(
        tmp_path):
    """Before: a run refused (or rerun after finishing) was recorded "done" with null
    metrics, and never run again."""
    from lars_jax.runs.sweep import plan_sweep, run_sweep
    from lars_jax.train import train
    from lars_jax.train.workdir_lock import WorkdirLock

    base = _cfg(tmp_path / "unused")
    grid = {"seed": [0]}
    (run,) = plan_sweep(base, grid, tmp_path / "sweep")
    train_fn = lambda config: train(config, data=tiny_data())
    with WorkdirLock(run.config.workdir):
        assert run_sweep(base, grid, tmp_path / "sweep", train_fn=train_fn) == []
    assert not (tmp_path / "sweep" / "results.jsonl").exists()
    (row,) = run_sweep(base, grid, tmp_path / "sweep", train_fn=train_fn)
    assert row["status"] == "done" and row["summary"]["test_accuracy"] is not None
    (tmp_path / "sweep" / "results.jsonl").unlink()  # killed before its row was written
    (again,) = run_sweep(base, grid, tmp_path / "sweep", train_fn=train_fn)
    assert again["summary"] == row["summary"]


def _sweep_cli(capsys, out, data_dir, *extra, grid="seed=0,1"):
    rc = cli.main(["sweep", "--grid", grid, "--out", str(out), "--model", "mlp1",
                   "--dataset", "fashion_mnist", "--data-dir", str(data_dir), "--train-subset",
                   "64", "--test-subset", "32", "--batch-size", "32", "--num-devices", "1",
                   "--epochs", "1", "--warmup-epochs", "0", "--no-progress", "--no-plot",
                   *extra])
    return rc, capsys.readouterr()


def test_a_damaged_sweep_folder_is_repaired_skipped_past_and_named(
        tmp_path, tiny_fashion_mnist, capsys):
    """A sweep killed while writing a results row, and one garbage line in a run's
    metrics.jsonl. Before: the next sweep appended its row to the cut-off line, and from
    then on sweep, sweep --dry-run and report failed (`line 2 is not a JSON object`, exit
    2); the garbage line made `sweep` print "2 done" and then a traceback."""
    out = tmp_path / "sweep"
    rc, _ = _sweep_cli(capsys, out, tiny_fashion_mnist, "--no-report")
    assert rc == 0
    results = out / "results.jsonl"
    first, second = results.read_text().splitlines()
    results.write_text(first + "\n" + second[: len(second) // 2])  # killed mid-write
    metrics = out / "seed=0" / "metrics.jsonl"
    rows = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(rows[:1] + ["\x00\x17garbage{\n"] + rows[1:]))

    rc, cap = _sweep_cli(capsys, out, tiny_fashion_mnist)
    assert rc == 0 and "Traceback" not in cap.err, cap.err
    assert "seed=0: done, skipped" in cap.err
    assert "seed=1: done (summary.json found), recorded" in cap.err
    assert f"{results}: line(s) 2 not valid JSON rows; skipped" in cap.err
    assert f"{metrics}: line(s) 2 not valid JSON rows; skipped" in cap.err
    lines = results.read_text().split("\n")
    assert lines[:2] == [first, second[: len(second) // 2]] and lines[3] == ""
    assert json.loads(lines[2])["run"] == "seed=1"  # a line of its own
    assert json.loads(lines[2])["summary"] == json.loads(second)["summary"]
    for argv in (["sweep", "--dry-run"], ["report"]):
        rc, cap = (_sweep_cli(capsys, out, tiny_fashion_mnist, "--dry-run")
                   if argv[0] == "sweep" else (cli.main(["report", str(out)]),
                                               capsys.readouterr()))
        assert rc == 0 and "Traceback" not in cap.err, (argv, cap.err)
    assert "done     seed=0\ndone     seed=1" in _sweep_cli(
        capsys, out, tiny_fashion_mnist, "--dry-run")[1].out
    report = (out / "report.md").read_text()
    assert "2 runs: 2 done." in report
    # a damaged summary.json: named, and the run is resumed to write it again
    (out / "seed=1" / SUMMARY_FILE).write_text('{"status": "ok", "test_acc')
    results.unlink()
    rc, cap = _sweep_cli(capsys, out, tiny_fashion_mnist, "--no-report")
    assert rc == 0 and "summary.json: not valid JSON" in cap.err, cap.err
    assert "seed=1: resuming" in cap.err
    assert _strict_json(out / "seed=1" / SUMMARY_FILE)["test_accuracy"] == \
        json.loads(second)["summary"]["test_accuracy"]


@pytest.fixture()
def small_tmpfs(tmp_path):
    """``mount(name, size)`` -> a folder on a tmpfs of that size; ``resize(folder, size)``.
    Skipped (with the reason) where tmpfs cannot be mounted: that needs root, as in CI."""
    if os.geteuid() != 0:
        pytest.skip("disk full is simulated on a small tmpfs, and mounting one needs root "
                    "(CI runs as root)")
    mounted = []

    def mount(name, size):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    def resize(folder, size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    yield mount, resize
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_mid_run_is_one_line_frees_the_failed_save_and_the_same_command_resumes(
        small_tmpfs, tiny_fashion_mnist, capsys):
    """A checkpoint of this run takes 1.6 MB: two fit on the 4 MB disk, the third does not.
    Before: 43 to 725 lines of tracebacks, the `*.orbax-checkpoint-tmp` folder stayed and
    kept the disk full, and in a sweep the run was recorded failed and skipped by a plain
    rerun."""
    mount, resize = small_tmpfs
    disk = mount("disk", "4m")
    workdir = disk / "run"
    argv = ["--train-subset", "256", "--epochs", "1", "--checkpoint-every-steps", "2",
            "--dataset", "fashion_mnist", "--data-dir", str(tiny_fashion_mnist),
            "--num-devices", "1", "--workdir", str(workdir)]
    rc, err = _cli(capsys, *argv)
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"lars-jax train: error: StorageError: cannot write in {workdir}: "
                             "no space left on the device ("), err
    assert "the last checkpoint, step 4, is intact" in err[0]
    assert "run the same command again to resume" in err[0]
    assert list(disk.rglob("*orbax-checkpoint-tmp*")) == []  # the failed save's folder
    resize(disk, "16m")
    rc, err = _cli(capsys, *argv)
    assert rc == 0 and "lars_jax: resuming from step 4" in "\n".join(err), err
    assert _strict_json(workdir / SUMMARY_FILE)["steps"] == 8

    # a sweep: the cell that failed for its disk is run again by a plain rerun, the
    # diverged one is not
    out = mount("sweep", "4m") / "out"
    grid = "learning_rate=1e30,0.1"
    extra = ("--no-report", "--train-subset", "256", "--epochs", "1",
             "--checkpoint-every-steps", "2", "--optimizer", "sgd", "--lr-scaling", "none",
             "--schedule", "constant")
    rc, cap = _sweep_cli(capsys, out, tiny_fashion_mnist, *extra, grid=grid)
    assert rc == 1 and "Traceback" not in cap.err, cap.err
    rows = {r["run"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    diverged, full = rows["learning_rate=1e+30"], rows["learning_rate=0.1"]
    assert diverged["error"].startswith("NonFiniteError") and "environmental" not in diverged
    assert full["error"].startswith("StorageError") and full["environmental"] is True
    assert "run again by the same command" in cap.err
    resize(out.parent, "16m")
    rc, cap = _sweep_cli(capsys, out, tiny_fashion_mnist, *extra, grid=grid)
    assert "learning_rate=1e+30: failed earlier (NonFiniteError" in cap.err
    assert "learning_rate=0.1: resuming" in cap.err
    assert rc == 1  # the diverged run is still a failure, reported as such
    rows = {r["run"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    assert rows["learning_rate=0.1"]["status"] == "done"
    assert rows["learning_rate=0.1"]["summary"]["resumed_from_step"] == 4


def test_a_workdir_turned_read_only_mid_run_is_one_line_and_the_same_command_resumes(
        small_tmpfs, tiny_fashion_mnist, capsys):
    """The checkpoint folder becomes read-only (a read-only bind mount over it) while the
    run trains. Before: tracebacks."""
    import threading

    mount, _ = small_tmpfs
    workdir = mount("rw", "64m") / "run"
    checkpoints = workdir / "checkpoints"
    argv = ["--train-subset", "256", "--epochs", "10", "--checkpoint-every-steps", "4",
            "--keep-checkpoints", "1", "--dataset", "fashion_mnist", "--data-dir",
            str(tiny_fashion_mnist), "--num-devices", "1", "--workdir", str(workdir)]
    bound = []

    def make_read_only():
        deadline = time.time() + 240
        while time.time() < deadline and not (checkpoints / "4").is_dir():
            time.sleep(0.005)
        for opts in (["--bind"], ["-o", "remount,bind,ro"]):
            subprocess.run(["mount", *opts, str(checkpoints), str(checkpoints)], check=True)
        bound.append(checkpoints)

    thread = threading.Thread(target=make_read_only)
    thread.start()
    try:
        rc, err = _cli(capsys, *argv)
    finally:
        thread.join()
        subprocess.run(["umount", str(checkpoints)], check=False)
    assert bound and rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"lars-jax train: error: StorageError: cannot write in {workdir}: "
                             "read-only file system ("), err
    step = int(err[0].split("the last checkpoint, step ")[1].split(",")[0])
    rc, err = _cli(capsys, *argv)
    assert rc == 0 and f"lars_jax: resuming from step {step}" in "\n".join(err), err
    assert _strict_json(workdir / SUMMARY_FILE)["steps"] == 80  # 10 epochs of 8 steps
