"""Checkpoints that survive faults: Orbax `CheckpointManager`, atomic saves, fallback on
corrupt or incompatible checkpoints.

Each checkpoint is a step folder under ``<workdir>/checkpoints/`` holding the `TrainState`
(Orbax ``StandardSave``: parameters, BatchNorm statistics, optimizer state, counters) and a
small JSON ``meta`` item (the config fields that fix the state's structure, and the step).
Orbax writes into a temporary folder and renames it when complete, so a run killed with
SIGKILL leaves either a finished checkpoint or none (unfinished temporaries are ignored and
cleaned up). In multi-process runs every process calls `save`; Orbax writes each array once.

`restore_latest` walks the checkpoints from the newest down. A checkpoint that cannot be
read (corrupt files) or whose meta does not match this run (another model, optimizer,
width, ...) is reported on stderr and moved aside to ``<workdir>/checkpoints_bad/``; the
next older one is tried.

References:
  Orbax checkpointing, https://orbax.readthedocs.io (CheckpointManager).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

# Config fields whose change makes a checkpoint unusable for a run (the state's structure or
# meaning depends on them).
STRUCTURE_FIELDS = (
    "model", "width", "norm", "dataset", "optimizer", "nesterov", "zero_init_last_bn",
    "denominator",
)


class CheckpointError(RuntimeError):
    """No checkpoint in the workdir could be restored."""


def _warn(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"lars_jax checkpoint: {msg}", file=sys.stderr, flush=True)


class Checkpointer:
    """Saves and restores `TrainState`s under ``<workdir>/checkpoints``.

    Args:
      workdir: the run folder.
      keep: number of checkpoints kept (older ones are deleted).
      meta: JSON-serialisable dict describing the run (compared on restore).
    """

    def __init__(self, workdir: str | Path, *, keep: int = 3, meta: dict[str, Any]) -> None:
        self.workdir = Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self.keep = keep
        self.meta = dict(meta)
        self._open()

    def _open(self) -> None:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any) -> Path:
        """Saves `state` (global arrays, replicated) at `step`; returns the folder."""
        meta = dict(self.meta, step=int(step))
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()
        return self.path(step)

    def _move_aside(self, step: int, reason: str) -> None:
        bad = self.workdir / "checkpoints_bad"
        _warn(f"checkpoint at step {step} ({self.path(step)}) is unusable: {reason}. "
              f"Moving it to {bad} and trying the previous one.")
        if jax.process_index() == 0:
            bad.mkdir(parents=True, exist_ok=True)
            dest = bad / str(step)
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(str(self.path(step)), str(dest))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"lars_jax_ckpt_moved_{step}")

    def restore_latest(self, target: Any) -> tuple[int, Any] | None:
        """Restores the newest usable checkpoint.

        Args:
          target: a pytree like the state, of arrays or `jax.ShapeDtypeStruct`s (with
            shardings), giving the structure, shapes, dtypes and placement to restore into.

        Returns:
          ``(step, state)``, or None when the workdir holds no checkpoint.

        Raises:
          CheckpointError: when checkpoints exist but none is usable.
        """
        steps = self.all_steps()
        if not steps:
            return None
        abstract = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
            else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            target)
        problems = []
        for step in reversed(steps):
            try:
                meta = self.manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                diff = {k: (meta.get(k), v) for k, v in self.meta.items()
                        if k in STRUCTURE_FIELDS and meta.get(k) != v}
                if diff:
                    raise ValueError(
                        "incompatible with this run: "
                        + ", ".join(f"{k}={a!r} (run: {b!r})" for k, (a, b) in diff.items()))
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                state = restored["state"]
                _check_like(state, abstract)
            except Exception as e:  # corrupt files raise many different exception types
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                problems.append(f"step {step}: {reason}")
                self._move_aside(step, reason)
                continue
            if problems:
                self.manager.close()
                self._open()  # forget the moved steps
            return step, state
        self.manager.close()
        self._open()
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: " + "; ".join(problems)
            + ". Use another workdir or resume=False.")

    def close(self) -> None:
        self.manager.close()


def _check_like(state: Any, abstract: Any) -> None:
    s_leaves, s_def = jax.tree.flatten(state)
    a_leaves, a_def = jax.tree.flatten(abstract)
    if s_def != a_def:
        raise ValueError(f"state structure differs: {s_def} vs {a_def}")
    for s, a in zip(s_leaves, a_leaves, strict=True):
        if s.shape != a.shape or s.dtype != a.dtype:
            raise ValueError(f"array {s.shape}/{s.dtype} where {a.shape}/{a.dtype} expected")
