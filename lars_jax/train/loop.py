"""The training loop: `train(config) -> summary dict`, the single entry point.

One run: (multi-host setup) -> `build` (data on the devices, model, learning-rate rule,
optimizer, compiled steps) -> restore the newest usable checkpoint -> steps (progress bar,
metrics JSONL, periodic evaluation and checkpoints) -> final evaluation, checkpoint,
``summary.json``, printed summary and (optionally) a plot.

MLPerf mode (``TrainConfig.mlperf``): the run also writes ``<workdir>/mlperf_log.txt``
(`lars_jax.runs.mlperf_log.MlperfLog`: init, run, block, epoch and evaluation events) and
stops at the first evaluation that reaches ``target_accuracy``.

Determinism: the examples and augmentation of step ``s`` depend only on ``(seed, s)``, and
the state is checkpointed bit for bit, so a run killed at any point and restarted with the
same command ends with the same parameters as an uninterrupted run (bitwise on CPU).

The setup (data, model, optimizer, compiled steps) is `lars_jax.train.build.build`;
this module is the loop over its steps, with timing, logging and checkpoints handed to
small helpers.

References:
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
  (arXiv 1706.02677).
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017
  (arXiv 1708.03888).
"""


from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax

from lars_jax.runs import stop_signals
from lars_jax.runs.errors import ConfigError, NonFiniteError, StorageError
from lars_jax.runs.mlperf_log import MlperfLog
from lars_jax.runs.run_files import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    read_json,
    to_jsonable,
    write_json,
)
from lars_jax.runs.storage import storage_problem
from lars_jax.train.build import Data, Run, build, evaluate
from lars_jax.train.checkpoint import Checkpointer
from lars_jax.train.config import TrainConfig, field_meta, fields_of_kind
from lars_jax.train.metrics import MetricsWriter, mean_rows
from lars_jax.train.step import TrainState
from lars_jax.train.workdir_lock import WorkdirLock

__all__ = ["NonFiniteError", "cluster_processes", "format_summary",
           "maybe_initialize_distributed", "next_stop", "restore_checkpoint", "train",
           "train_with_state"]


# ----------------------------------------------------------------------------- helpers


# Launchers whose environment `jax.distributed.initialize()` reads by itself: a variable
# that marks the launcher (the set JAX checks) -> the one giving the number of processes.
CLUSTER_ENVIRONMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "SLURM": (("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID"), "SLURM_NTASKS"),
    "Open MPI": (("OMPI_MCA_orte_hnp_uri",), "OMPI_COMM_WORLD_SIZE"),
}


def cluster_processes(env: Mapping[str, str]) -> tuple[str, int] | None:
    """``(launcher, number of processes)`` when `env` is that of a task started by SLURM
    (``srun``) or Open MPI (``mpirun``), else None."""
    for launcher, (marks, count) in CLUSTER_ENVIRONMENTS.items():
        if all(m in env for m in marks):
            return launcher, int(env.get(count, "1"))
    return None


def maybe_initialize_distributed(config: TrainConfig) -> None:
    """Calls `jax.distributed.initialize` for multi-process runs.

    Used when any of ``coordinator_address``, ``num_processes``, ``process_id`` is set in
    the config, or the environment has ``JAX_COORDINATOR_ADDRESS`` (with
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``); otherwise, in a task of a SLURM or
    Open MPI job of more than one task (`cluster_processes`), without arguments: JAX reads
    the coordinator, the number of processes and this process's id from the launcher's
    variables. A one-task job is a single process and initializes nothing. Must run
    before anything touches a device. On CPU, cross-process collectives use gloo.
    """
    env = os.environ
    addr = config.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    nproc = config.num_processes or (int(env["JAX_NUM_PROCESSES"])
                                     if "JAX_NUM_PROCESSES" in env else None)
    pid = config.process_id if config.process_id is not None else (
        int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
    cluster = cluster_processes(env)
    if addr is None and nproc is None and pid is None and (cluster is None
                                                           or cluster[1] < 2):
        return
    if jax.distributed.is_initialized():
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # option absent in some versions: the default is used
        pass
    jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)


def run_device_count(config: TrainConfig) -> int:
    """The devices a run uses (``num_devices``, else all), counted after starting JAX's
    multi-process runtime where asked for; more than are present is a `ConfigError`."""
    maybe_initialize_distributed(config)
    present = jax.device_count()
    if config.num_devices is not None and config.num_devices > present:
        raise ConfigError(f"TrainConfig.num_devices={config.num_devices}: only {present} "
                          f"{jax.default_backend()} device(s) present")
    return config.num_devices or present


def next_stop(step: int, total_steps: int, log_every: int, eval_every: int,
              checkpoint_every: int) -> int:
    """The first step after `step` at which the loop logs, evaluates, checkpoints or ends.

    A multi-step call (``steps_per_call > 1``) never runs past it, so those events happen
    at exactly the same steps as with one step per call.
    """
    stops = [total_steps, (step // log_every + 1) * log_every]
    for every in (eval_every, checkpoint_every):
        if every > 0:
            stops.append((step // every + 1) * every)
    return min(stops)


class _Clock:
    """Training throughput: the first call of each kind (it compiles) and pauses excluded."""

    def __init__(self) -> None:
        self.compile_time: float | None = None
        self.train_time = 0.0
        self.train_images = 0
        self._compiled: set[bool] = set()
        self._since = time.perf_counter()
        self._steps = 0

    def ran(self, kind: bool, steps: int, started: float, outputs: Any) -> None:
        """Records a call of `kind` (multi-step or not) that ran `steps` steps."""
        if kind in self._compiled:
            self._steps += steps
            return
        self._compiled.add(kind)
        jax.block_until_ready(outputs)
        self.compile_time = (self.compile_time or 0.0) + time.perf_counter() - started
        self._since, self._steps = time.perf_counter(), 0

    def lap(self, batch_size: int) -> float | None:
        """Images per second since the last lap (None if every call since then compiled)."""
        now, images_per_s = time.perf_counter(), None
        if self._steps:
            images_per_s = self._steps * batch_size / (now - self._since)
            self.train_time += now - self._since
            self.train_images += self._steps * batch_size
        self._since, self._steps = now, 0
        return images_per_s

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time spent inside (evaluation, checkpoints) does not count as training."""
        start = time.perf_counter()
        yield
        self._since += time.perf_counter() - start


class _Progress:
    """A tqdm bar on process 0 when ``config.progress`` (every method a no-op otherwise)."""

    def __init__(self, config: TrainConfig, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled and config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            desc=f"{config.model} {config.optimizer} B={config.batch_size}")

    def update(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def train_row(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}",
                                 lr=f"{row.get('lr', float('nan')):.3g}", refresh=False)

    def eval_row(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.write(f"step {row['step']} (epoch {row['epoch']:.2f}): test accuracy "
                           f"{row['test_accuracy']:.4f}, test loss {row['test_loss']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _restore(run: Run, checkpointer: Checkpointer, lead: bool) -> tuple[TrainState, int | None]:
    """The newest usable checkpoint's state and step, or the initial state and None."""
    if not run.config.resume:
        checkpointer.archive_existing()  # kept, and out of the way of the new run's
        return run.state, None
    restored = checkpointer.restore_latest(run.state)
    if restored is None:
        return run.state, None
    step, state = restored
    if lead:
        print(f"lars_jax: resuming from step {step} ({checkpointer.path(step)})",
              file=sys.stderr, flush=True)
    return state, step


def _train_rows(pending: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-step metric dicts from the outputs of ``(steps, metrics)`` of single-step calls
    (metrics of one step) and multi-step calls (metrics stacked over the steps)."""
    rows = []
    for steps, metrics in jax.device_get(pending):
        if steps > 1:
            rows += [{key: v[i] for key, v in metrics.items()} for i in range(steps)]
        else:
            rows.append(metrics)
    return rows


def _stop_if_nonfinite(state: TrainState, config: TrainConfig, checkpointer: Checkpointer,
                       last_good: int | None, lead: bool, total_steps: int) -> None:
    """Raises NonFiniteError (after writing the summary) when the step guard tripped, or
    when more than ``max_skipped_fraction`` of the run's steps were skipped."""
    # state.nonfinite_step counts completed steps before the bad one; metrics.jsonl numbers
    # a step by the count after it, so the bad step is nonfinite_step + 1 there.
    bad = int(jax.device_get(state.nonfinite_step)) + 1
    skipped = int(jax.device_get(state.skipped))
    limit = config.max_skipped_fraction * total_steps
    if bad < 1 and skipped <= limit:
        return
    # with nan_policy="skip" the step that passed the limit was the last to change the
    # state (StepOptions.max_skipped): its count is the state's step
    passed_at = int(jax.device_get(state.step))
    where = (f"{checkpointer.path(last_good)} (step {last_good})" if last_good is not None
             else "none (the run had not checkpointed yet)")
    if lead:
        write_json(Path(config.workdir) / SUMMARY_FILE, {
            "status": "nonfinite", "nonfinite_step": bad if bad >= 1 else None,
            "skipped_steps": skipped, "last_good_checkpoint_step": last_good,
            "skip_limit_step": passed_at if bad < 1 else None,
            "config": config.to_dict()})
    if bad >= 1:
        raise NonFiniteError(
            f"non-finite loss, gradients or parameters at step {bad}: training stopped "
            f"(nan_policy='stop'). Last good checkpoint: {where}. Lower the learning rate, "
            "add warmup, or use nan_policy='skip' (in a new --workdir, or with --no-resume).")
    raise NonFiniteError(
        f"{skipped} non-finite steps skipped of {total_steps}, more than max_skipped_fraction="
        f"{config.max_skipped_fraction} (passed at step {passed_at}): training stopped "
        f"(nan_policy='skip'), the run diverged. Last good checkpoint: {where}. Lower the "
        "learning rate or add warmup (in a new --workdir, or with --no-resume).")


def _writable_dir_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be created or written (None if it can)."""
    p = Path(path).expanduser().absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a directory"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    return None


def _preflight(config: TrainConfig, data: Data | None) -> None:
    """Problems found before any data loading or workdir creation (ConfigError naming the
    field, which the command prints as one line with exit status 2)."""
    run_device_count(config)
    why = _writable_dir_problem(config.workdir)
    if why:
        raise ConfigError(f"TrainConfig.workdir={config.workdir!r}: cannot be written ({why})")
    if data is not None:
        return
    from lars_jax.data.sources import check_available, default_data_dir

    data_dir = config.data_dir or default_data_dir()
    why = _writable_dir_problem(data_dir)
    if why and not Path(data_dir).is_dir():
        raise ConfigError(f"TrainConfig.data_dir={data_dir!r}: cannot be written ({why})")
    try:
        prepared = check_available(config.dataset, data_dir)
    except FileNotFoundError as e:
        raise ConfigError(f"TrainConfig.dataset={config.dataset!r}: {e}") from None
    if why and not prepared:  # a read-only folder is fine once the data set is prepared
        raise ConfigError(f"TrainConfig.data_dir={data_dir!r}: cannot be written ({why}) and "
                         f"{config.dataset!r} is not prepared there")


def _build(config: TrainConfig, data: Data | None, **kwargs: Any) -> Run:
    """`build`, with a damaged data file reported as a one-line ConfigError naming it."""
    from lars_jax.data.sources import DataFileError

    try:
        return build(config, data, **kwargs)
    except DataFileError as e:
        raise ConfigError(f"TrainConfig.dataset={config.dataset!r}: {e}") from None


def _read_dict(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or not a readable object."""
    try:
        value = read_json(path) if path.exists() else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _changed_fields(config: TrainConfig, recorded: dict[str, Any]) -> list[str]:
    """The structural and result fields whose value in `recorded` (a config dict; a field
    it lacks has its default) differs from `config`'s."""
    ours, meta = to_jsonable(config.to_dict()), field_meta()
    return [name for name in fields_of_kind("structural") + fields_of_kind("result")
            if to_jsonable(recorded.get(name, meta[name].default)) != ours[name]]


def _check_same_run(config: TrainConfig) -> dict[str, Any] | None:
    """Refuses a config whose run differs from the one its workdir holds, before anything
    is written there; returns the workdir's finished summary that this run extends (None
    when it extends none).

    The workdir's run is its ``config.json`` (else its ``summary.json``'s config). A change
    of a structural or result field is refused (ConfigError, one line naming the fields
    and the ways out); cosmetic fields may change. With ``extend_epochs`` the epochs of a
    finished run may be raised. ``resume=False`` starts over and checks nothing.
    """
    workdir = Path(config.workdir)
    summary = _read_dict(workdir / SUMMARY_FILE)
    recorded = _read_dict(workdir / CONFIG_FILE) or (summary or {}).get("config")
    if not config.resume or not isinstance(recorded, dict):
        return None
    finished = (summary if summary is not None and summary.get("status") == "ok"
                and _changed_fields(config, summary.get("config") or {}) == ["epochs"]
                else None)
    changed = _changed_fields(config, recorded)
    if not changed:
        return finished  # an extension killed before its end, rerun: still one
    old = lambda name: recorded.get(name, field_meta()[name].default)
    diff = ", ".join(f"{name} {old(name)!r} -> {getattr(config, name)!r}" for name in changed)
    where = f"TrainConfig.{changed[0]}={getattr(config, changed[0])!r}: {config.workdir}"
    if changed == ["epochs"] and config.extend_epochs:
        if config.epochs <= old("epochs"):
            raise ConfigError(f"{where} holds a run of {old('epochs')!r} epochs: "
                              "--extend-epochs only raises epochs; use a new --workdir")
        if finished is None:
            raise ConfigError(f"{where} holds a run of {old('epochs')!r} epochs that has "
                              "not finished: finish it first (the same command without the "
                              "new --epochs), or use a new --workdir")
        return finished
    raise ConfigError(
        f"{where} holds another run (changed: {diff}): use a new --workdir, or "
        "--extend-epochs to train its finished run on to more epochs (only epochs may "
        "change; --no-resume starts over there)")


def _extension_record(previous: dict[str, Any] | None, config: TrainConfig
                      ) -> list[dict[str, Any]] | None:
    """summary.json's ``epochs_extended`` of a run that extends `previous` (its finished
    summary): the earlier extensions, then ``{from_epochs, from_step, to_epochs}``."""
    if previous is None:
        return None
    before = previous["config"].get("epochs")
    return [*previous.get("epochs_extended", []), {
        "from_epochs": before, "from_step": previous.get("steps"), "to_epochs": config.epochs}]


def _finished_summary(config: TrainConfig) -> dict[str, Any] | None:
    """The summary of this very run when it already finished in its workdir (the same
    structural and result fields; cosmetic ones and the folder's path may differ), else
    None."""
    summary = _read_dict(Path(config.workdir) / SUMMARY_FILE)
    if (not config.resume or summary is None or summary.get("status") != "ok"
            or not isinstance(summary.get("config"), dict)
            or _changed_fields(config, summary["config"])):
        return None
    return summary


def _stop_if_requested(step: int, saved: int | None, checkpointer: Checkpointer, run: Run,
                       state: TrainState, iteration: int) -> None:
    """After SIGINT/SIGTERM/SIGHUP, or at JAX's preemption sync point of a multi-process
    run (`iteration`: the loop iteration, the same on every process): checkpoints `step`
    (unless done), then raises `lars_jax.runs.stop_signals.TrainingInterrupted` with the
    one-line message."""
    signum = stop_signals.requested()
    if signum is None and stop_signals.preemption_sync_point(iteration):
        signum = signal.SIGTERM  # JAX's notifier took it, on one process or all
    if signum is None:
        return
    name = stop_signals.signal_name(signum)
    if saved != step and step > 0 and run.config.checkpoint_every_steps >= 0:
        checkpointer.save(step, run.unplace(state))
        saved = step
    if saved == step and step > 0:
        where = f"checkpoint of step {step} saved in {checkpointer.path(step)}"
    elif saved is not None:
        where = f"last checkpoint: step {saved}"
    else:
        where = "no checkpoint yet"
    raise stop_signals.TrainingInterrupted(
        signum, f"{name} at step {step}: {where}; run the same command again to resume")


def _plot(workdir: Path) -> None:
    try:
        from lars_jax.runs.plotting import plot_run
    except ImportError as e:
        print(f"lars_jax: no plot ({e})", file=sys.stderr)
        return
    try:
        plot_run(workdir)
    except Exception as e:  # a failed plot must not fail a finished run
        print(f"lars_jax: plotting failed: {type(e).__name__}: {e}", file=sys.stderr)


# ----------------------------------------------------------------------------- train


def train(config: TrainConfig, *, data: Data | None = None) -> dict[str, Any]:
    """Runs one training job; returns the summary (also written to ``summary.json``).

    A run that already finished in ``config.workdir`` with the same config (up to its
    cosmetic fields) is not trained again: its summary is returned as it was. A workdir
    holds one run: a config that differs from its run in a structural or result field is
    refused before anything is written there (``extend_epochs`` may raise a finished run's
    epochs; ``resume=False`` starts over).

    Args:
      config: the run's settings (validated first; bad values raise ConfigError naming the
        field before any compute).
      data: an in-memory data set to use instead of ``config.dataset`` (for custom data
        and tests).

    Returns:
      The summary dict: ``test_accuracy``, ``test_loss``, ``train_loss``,
      ``train_accuracy`` (last logged), ``steps``, ``epochs``, ``images_per_s`` (training
      throughput after compilation), ``wall_time_s``, ``compile_time_s``,
      ``train_time_s`` (these four time this call only: the steps from
      ``timed_from_step`` on, which is the resume step of a resumed run; a finished run
      whose summary.json was lost and is rerun has ``timed_from_step == steps``, no
      throughput, and the time of the rerun),
      ``skipped_steps``, ``resumed_from_step``, ``num_devices``, ``num_processes``,
      ``peak_lr``, ``final_lr``, ``workdir``, ``status`` and ``config``.

    Raises:
      ConfigError: a bad config (a ValueError), or a workdir that holds another run.
      NonFiniteError: NaN/Inf loss or gradients with ``nan_policy="stop"``.
      CheckpointError: checkpoints exist but none is usable.
      StorageError: the run's files could not be written (disk full, quota, read-only file
        system); the same call resumes once the cause is gone.
    """
    return _train(config, data, keep_finished=True)[0]


def train_with_state(config: TrainConfig, *, data: Data | None = None
                     ) -> tuple[dict[str, Any], TrainState]:
    """`train`, also returning the final `TrainState` (parameters, BatchNorm statistics,
    optimizer state; replicated global arrays), for tests and benchmarks.

    A run that already finished in ``config.workdir`` restores its last checkpoint (and
    keeps its summary) instead of returning early.
    """
    summary, state = _train(config, data, keep_finished=False)
    assert state is not None
    return summary, state


def _train(config: TrainConfig, data: Data | None, keep_finished: bool
           ) -> tuple[dict[str, Any], TrainState | None]:
    """`train` with SIGINT/SIGTERM deferred to safe points, inside the workdir lock."""
    t_start = time.perf_counter()
    config.validate()
    with stop_signals.StopSignals():  # shares the command line's, when it runs under it
        maybe_initialize_distributed(config)
        _preflight(config, data)
        stop_signals.raise_if_requested("before training started")
        lead = jax.process_index() == 0
        with WorkdirLock(config.workdir) if lead else contextlib.nullcontext():
            try:
                return _train_locked(config, data, keep_finished, t_start, lead)
            except Exception as e:  # disk full, read-only: one line, nothing of the run lost
                why = storage_problem(e)
                if why is None or isinstance(e, StorageError):
                    raise
                raise _storage_error(config, why, e) from e


def _storage_error(config: TrainConfig, why: str, error: Exception) -> StorageError:
    """The one-line error for a run whose files could not be written."""
    folder = Path(config.workdir) / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() \
        else []
    last = f"the last checkpoint, step {max(steps)}, is intact" if steps else "no checkpoint yet"
    first = (str(error).splitlines() or [""])[0][:300]
    return StorageError(
        f"cannot write in {config.workdir}: {why} ({type(error).__name__}: {first}); "
        f"{last}. Free space there (or make it writable), then run the same command again "
        "to resume")


def _train_locked(config: TrainConfig, data: Data | None, keep_finished: bool, t_start: float,
                  lead: bool) -> tuple[dict[str, Any], TrainState | None]:
    """`_train` inside the workdir lock."""
    extends = _check_same_run(config)
    finished = _finished_summary(config)
    if finished is not None and keep_finished:
        if lead:
            print(f"lars_jax: {config.workdir} holds this run, finished: its results "
                  "are kept (--no-resume or another workdir trains again)",
                  file=sys.stderr)
            print(format_summary({**finished, "workdir": config.workdir}), flush=True)
        return finished, None
    run = _build(config, data)
    stop_signals.raise_if_requested("before training started")
    mlperf = _mlperf_log(run, lead, t_start) if config.mlperf else None
    result = _loop(run, lead, mlperf)
    summary = _summary(run, result, t_start)
    if mlperf:
        summary.update(mlperf_status=mlperf.status, mlperf_log=mlperf.path)
    if finished is not None and result.resumed_from == run.total_steps:
        summary = finished  # rerun of a finished run: its results as they were
    elif extends is not None:
        summary["epochs_extended"] = _extension_record(extends, config)
    if lead:
        workdir = Path(config.workdir)
        write_json(workdir / SUMMARY_FILE, summary)
        print(format_summary({**summary, "workdir": config.workdir}), flush=True)
        if config.plot:
            _plot(workdir)
    return summary, result.state


class _LoopResult(NamedTuple):
    """What the loop leaves for the summary."""

    state: TrainState  # the final state, global layout
    last_train: dict[str, Any]  # the last train row written
    last_eval: dict[str, Any]  # the last eval row written
    resumed_from: int | None
    clock: _Clock


def _loop(run: Run, lead: bool, mlperf: MlperfLog | None = None) -> _LoopResult:
    """The steps of a built run: restore, train, log, evaluate, checkpoint, stop on request
    (and, in MLPerf mode, log to `mlperf` and stop at its target accuracy)."""
    config, epoch_steps, total_steps = run.config, run.steps_per_epoch, run.total_steps
    workdir = Path(config.workdir)
    eval_every = int(round(config.eval_every_epochs * epoch_steps))
    checkpoint_every = max(config.checkpoint_every_steps, 0)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints, meta={
        f: getattr(config, f) for f in fields_of_kind("structural")})
    state, resumed_from = _restore(run, checkpointer, lead)
    if lead:  # the checks passed (same run, usable checkpoints): this run is the workdir's
        write_json(workdir / CONFIG_FILE, config.to_dict())
    last_good = resumed_from
    state = run.place(state)
    writer = MetricsWriter(workdir, enabled=lead, tensorboard=config.tensorboard,
                           resume_step=resumed_from)
    step = resumed_from or 0
    progress = _Progress(config, total_steps, step, lead)
    clock = _Clock()
    pending: list[tuple[int, dict[str, Any]]] = []  # (steps of the call, metrics)
    # a resumed run starts from the rows it already wrote (a finished one may take none)
    last_train = next((r for r in reversed(writer.kept_rows) if r.get("kind") == "train"), {})
    last_eval = next((r for r in reversed(writer.kept_rows) if r.get("kind") == "eval"), {})
    iteration = 0  # the loop's iterations: the same count on every process
    reached = False  # MLPerf mode: an evaluation reached the target (the run stops)
    try:
        _stop_if_requested(step, last_good, checkpointer, run, state, iteration)
        if mlperf:
            mlperf.run_start(step)
        while step < total_steps and not reached:
            iteration += 1
            started = time.perf_counter()
            stop = next_stop(step, total_steps, config.log_every_steps, eval_every,
                             checkpoint_every)
            state, metrics, done = run.advance(state, step, stop)
            step += done
            pending.append((done, metrics))
            clock.ran(done > 1, done, started, metrics)
            progress.update(done)
            if mlperf:
                mlperf.step_done(step)

            last = step == total_steps
            log = last or step % config.log_every_steps == 0
            do_eval = last or (eval_every and step % eval_every == 0)
            do_checkpoint = config.checkpoint_every_steps >= 0 and (
                last or (checkpoint_every and step % checkpoint_every == 0))
            if log:
                row = mean_rows(_train_rows(pending), ("loss", "accuracy", "finite"))
                row = {"kind": "train", "step": step, "epoch": step / epoch_steps, **row}
                images_per_s = clock.lap(config.batch_size)
                if images_per_s is not None:
                    row["images_per_s"] = images_per_s
                last_train = writer.write(row)
                pending = []
                progress.train_row(last_train)
            if log or do_eval or do_checkpoint:
                _stop_if_nonfinite(run.unplace(state), config, checkpointer, last_good, lead,
                                   total_steps)
            with clock.pause():
                if do_eval:
                    last_eval = _evaluate_row(run, state, step, writer, mlperf)
                    progress.eval_row(last_eval)
                    reached = bool(mlperf and mlperf.status == "success")
                if do_checkpoint:
                    checkpointer.save(step, run.unplace(state))
                    last_good = step
            _stop_if_requested(step, last_good, checkpointer, run, state, iteration)
        if last_eval.get("step") != step:  # killed after the last checkpoint
            last_eval = _evaluate_row(run, state, step, writer)
    finally:
        if mlperf:
            mlperf.close()  # run_stop "aborted" unless the target was reached
        run.close()  # the host input's reader thread, if any
        progress.close()
        writer.close()
        checkpointer.close()
    return _LoopResult(run.unplace(state), last_train, last_eval, resumed_from, clock)


def _summary(run: Run, result: _LoopResult, t_start: float) -> dict[str, Any]:
    """The run's summary (``summary.json``) from what the loop left."""
    config, clock = run.config, result.clock
    epoch_steps = run.steps_per_epoch
    warmup_steps = max(int(round(config.warmup_epochs * epoch_steps)), 0)
    return {
        "status": "ok",
        "test_accuracy": result.last_eval.get("test_accuracy"),
        "test_loss": result.last_eval.get("test_loss"),
        "train_loss": result.last_train.get("loss"),
        "train_accuracy": result.last_train.get("accuracy"),
        "steps": int(jax.device_get(result.state.step)),
        "epochs": run.total_steps / epoch_steps,
        "steps_per_epoch": epoch_steps,
        "images_per_s": clock.train_images / clock.train_time if clock.train_time > 0 else None,
        "train_time_s": clock.train_time,
        "wall_time_s": time.perf_counter() - t_start,
        "compile_time_s": clock.compile_time,
        "timed_from_step": result.resumed_from or 0,
        "skipped_steps": int(jax.device_get(result.state.skipped)),
        "resumed_from_step": result.resumed_from,
        "num_devices": run.num_devices,
        "num_processes": jax.process_count(),
        "peak_lr": float(run.lr_schedule(warmup_steps)) if config.schedule != "onecycle"
        else None,
        "final_lr": result.last_train.get("lr"),
        "workdir": str(config.workdir),
        "config": config.to_dict(),
    }


def _mlperf_log(run: Run, lead: bool, t_start: float) -> MlperfLog:
    """MLPerf mode: the run's `MlperfLog` (``<workdir>/mlperf_log.txt``), its header written;
    ``init_start`` is dated when `train` started."""
    from lars_jax import schedules
    from lars_jax.runs import mlperf_log
    from lars_jax.train.config import peak_learning_rate

    config, spe, total = run.config, run.steps_per_epoch, run.total_steps
    warmup = int(round(config.warmup_epochs * spe))
    steps = mlperf_log.MlperfSteps(spe, total, warmup, schedules.mlperf_decay_steps(total, warmup))
    init_ms = int(time.time() * 1000 - (time.perf_counter() - t_start) * 1000)
    log = mlperf_log.MlperfLog(config.workdir, steps, config.target_accuracy, enabled=lead,
                               init_time_ms=init_ms)
    platform = f"{run.num_devices}x{jax.devices()[0].device_kind}"
    log.header(platform, mlperf_log.hyperparameters(
        config, steps, peak_lr=peak_learning_rate(config), num_train=run.input.num_train,
        num_eval=run.input.num_test, num_devices=run.num_devices))
    return log


def _evaluate_row(run: Run, state: TrainState, step: int, writer: MetricsWriter,
                  mlperf: MlperfLog | None = None) -> dict[str, Any]:
    """Evaluates `state` (the step's layout) and writes the eval row; returns it. In MLPerf
    mode the evaluation is logged to `mlperf` too (``run_stop`` when it reaches the target)."""
    if mlperf:
        mlperf.eval_start(step)
    loss, accuracy = evaluate(run, run.unplace(state))
    if mlperf:
        mlperf.evaluated(step, accuracy)
    return writer.write({"kind": "eval", "step": step, "epoch": step / run.steps_per_epoch,
                         "test_loss": loss, "test_accuracy": accuracy})


def format_summary(s: dict[str, Any]) -> str:
    """A few human-readable lines for the end of a run."""
    c = s["config"]
    num = lambda v: "n/a (NaN or Inf)" if v is None else f"{v:.4f}"
    ips = s.get("images_per_s")
    timed = s.get("timed_from_step") or 0
    scope = f" (this invocation only: from step {timed})" if timed else ""
    lines = [
        f"== {c['model']} on {c['dataset']} with {c['optimizer']}, batch {c['batch_size']}, "
        f"{s['epochs']:.3g} epochs ({s['steps']} steps) on {s['num_devices']} device(s)",
        f"   test accuracy {num(s.get('test_accuracy'))}, test loss {num(s.get('test_loss'))}",
        f"   wall time {s['wall_time_s']:.1f} s (compile {s['compile_time_s'] or 0:.1f} s), "
        + (f"{ips:.1f} images/s" if ips else "throughput n/a") + scope,
        f"   metrics: {Path(s['workdir']) / METRICS_FILE}",
    ]
    if s.get("skipped_steps"):
        lines.insert(2, f"   skipped non-finite steps: {s['skipped_steps']}")
    return "\n".join(lines)


def restore_checkpoint(workdir: str | os.PathLike[str], *, data: Data | None = None
                       ) -> tuple[int, TrainState]:
    """The newest usable checkpoint of a run folder: ``(step, state)``.

    The run's ``config.json`` gives the model and optimizer (and so the state's structure);
    the state is restored on one device (``state.params`` are the trained parameters,
    ``state.batch_stats`` the BatchNorm running statistics). As in a resumed run, a
    corrupt checkpoint is moved to ``checkpoints_bad/`` and the previous one is used.

    Args:
      workdir: the run's ``--workdir``.
      data: the in-memory data set the run was given instead of ``config.dataset`` (its
        image shape and number of classes fix the model's), if any.

    Raises:
      FileNotFoundError: the folder has no ``config.json`` or no checkpoint.
      lars_jax.train.checkpoint.CheckpointError: checkpoints exist but none is usable.
    """
    workdir = Path(workdir)
    config = TrainConfig.from_dict(read_json(workdir / CONFIG_FILE))
    run = build(config.replace(num_devices=1, parallel="jit", steps_per_call=1), data)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                                meta={f: getattr(config, f) for f in fields_of_kind("structural")})
    try:
        restored = checkpointer.restore_latest(run.state)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir / 'checkpoints'}: no checkpoint to restore")
    return restored
