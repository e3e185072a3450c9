"""Checkpoints that survive faults: Orbax `CheckpointManager`, atomic saves, fallback on
corrupt or incompatible checkpoints.

Each checkpoint is a step folder under ``<workdir>/checkpoints/`` holding the `TrainState`
(Orbax ``StandardSave``: parameters, BatchNorm statistics, optimizer state, counters) and a
small JSON ``meta`` item (the config fields that fix the state's structure, and the step).
Orbax writes into a temporary folder and renames it when complete, so a run killed with
SIGKILL leaves either a finished checkpoint or none (unfinished temporaries are ignored and
cleaned up). A save that fails (disk full, read-only file system) deletes its temporary
folder before the error propagates, so the space it took is free again for the rerun. In
multi-process runs every process calls `save`; Orbax writes each array once.

Each finished checkpoint also gets ``<step>/lars_jax_sha256.json``: the SHA-256 of every
file in it, written by process 0 after Orbax's save completes. `restore_latest` checks it
before reading anything: a checkpoint whose bytes changed (a flipped bit, a truncated or
replaced file) is treated exactly like one that cannot be read. A checkpoint without the
file (killed between the save and the checksum, or written by an older version) is
restored as before.

`restore_latest` walks the checkpoints from the newest down. A checkpoint that cannot be
read (corrupt files, wrong checksum) is reported on stderr and moved aside to
``<workdir>/checkpoints_bad/``; the next older one is tried. A checkpoint that is intact
but belongs to another kind of run (its meta names another model, optimizer, width, ...,
or its state has another tree structure, e.g. written by another lars_jax version) is left
where it is: if no checkpoint is usable, `CheckpointError` says which and how to go on
(another workdir, or ``resume=False``, which archives the old checkpoints with `archive_existing`).

References:
  Orbax checkpointing, https://orbax.readthedocs.io (CheckpointManager).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lars_jax.runs.errors import CheckpointError

CHECKSUM_FILE = "lars_jax_sha256.json"


@contextlib.contextmanager
def _quiet_failed_reads() -> Iterator[None]:
    """Silences what Orbax, TensorStore and asyncio print about a checkpoint that fails to
    read (absl ERROR lines, "Event loop is closed" from coroutines of the failed read):
    `restore_latest` reports each unusable checkpoint in one line of its own."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and "Event loop is closed" in str(unraisable.exc_value)):
            previous_hook(unraisable)

    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.unraisablehook = hook
    try:
        yield
        gc.collect()  # the failed reads' leftovers go now, while the filter is on
    finally:
        sys.unraisablehook = previous_hook
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _warn(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"lars_jax checkpoint: {msg}", file=sys.stderr, flush=True)


class Checkpointer:
    """Saves and restores `TrainState`s under ``<workdir>/checkpoints``.

    Args:
      workdir: the run folder.
      keep: number of checkpoints kept (older ones are deleted).
      meta: JSON-serialisable dict of the run's structural config fields (the trainer
        passes `fields_of_kind("structural")`); a checkpoint whose meta differs in any of
        them is not restored.
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
        with _quiet_failed_reads():  # it reads the metadata of the existing checkpoints
            self.manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any) -> Path:
        """Saves `state` (global arrays, replicated) at `step`; returns the folder."""
        meta = dict(self.meta, step=int(step), state_structure=structure_fingerprint(state))
        try:
            self.manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            self.manager.wait_until_finished()
        except BaseException:  # e.g. disk full: the unfinished folder would keep it full
            self.remove_temporaries()
            with _quiet_failed_reads():  # the failed writes' coroutines go now, silently
                pass
            raise
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"lars_jax_ckpt_saved_{step}")
        if jax.process_index() == 0:
            write_checksums(self.path(step))
        return self.path(step)

    def remove_temporaries(self) -> list[Path]:
        """Deletes the unfinished checkpoint folders (Orbax's ``*.orbax-checkpoint-tmp*``:
        a save that failed or was killed) and returns them. Process 0 only."""
        if jax.process_index() != 0 or not self.directory.is_dir():
            return []
        removed = sorted(self.directory.glob("*.orbax-checkpoint-tmp*"))
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

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
        with _quiet_failed_reads():
            steps = self.all_steps()
            return self._restore_newest_usable(steps, target) if steps else None

    def _restore_newest_usable(self, steps: list[int], target: Any) -> tuple[int, Any]:
        abstract = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
            else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            target)
        problems, moved, incompatible = [], False, False
        fingerprint = structure_fingerprint(abstract)
        for step in reversed(steps):
            meta, error = None, checksum_problem(self.path(step))
            if error is None:
                try:
                    meta = self.manager.restore(
                        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                except Exception as e:  # an unreadable meta file: corrupt
                    error = e
            if meta is not None:
                why = _incompatibility(meta, self.meta, fingerprint)
                if why:  # intact, but another kind of run: leave it alone
                    problems.append(f"step {step}: incompatible with this run: {why}")
                    incompatible = True
                    continue
                try:
                    restored = self.manager.restore(
                        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                    state = restored["state"]
                    _check_like(state, abstract)
                    error = None
                except Exception as e:  # corrupt files raise many different exception types
                    error = e
            if error is not None:
                first = str(error).splitlines()[0] if str(error) else ""
                reason = f"{type(error).__name__}: {first}"
                if _is_structure_mismatch(error):  # an older checkpoint without fingerprint
                    problems.append(f"step {step}: incompatible with this run: the saved state "
                                    f"has another tree structure ({reason})")
                    incompatible = True
                    continue
                problems.append(f"step {step}: {reason}")
                self._move_aside(step, reason)
                moved = True
                continue
            if moved:
                self.manager.close()
                self._open()  # forget the moved steps
            return step, state
        self.manager.close()
        self._open()
        hint = ("Use another workdir, or resume=False (--no-resume) to start over; the old "
                "checkpoints are then archived next to them, not deleted."
                if incompatible else "Use another workdir or resume=False.")
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: " + "; ".join(problems) + ". " + hint)

    def archive_existing(self) -> Path | None:
        """Moves the existing checkpoints to ``<workdir>/checkpoints_previous-<UTC time>``.

        For a run started with ``resume=False`` in a folder that holds checkpoints: the old
        ones are kept (no lost work), and they can no longer mix with the new run's (the
        manager keeps the highest steps, which could be the old run's). Returns the archive
        folder, or None when there was nothing to archive.
        """
        if not self.all_steps():
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.workdir / f"checkpoints_previous-{stamp}"
        self.manager.close()
        if jax.process_index() == 0:
            shutil.move(str(self.directory), str(dest))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("lars_jax_ckpt_archived")
        self._open()
        _warn(f"resume=False: the previous checkpoints were moved to {dest}")
        return dest

    def close(self) -> None:
        self.manager.close()


class ChecksumMismatch(RuntimeError):
    """A checkpoint's files differ from the SHA-256 sums written when it was saved."""


def _file_digests(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `folder` (but the checksum file)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != CHECKSUM_FILE:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[str(path.relative_to(folder))] = digest.hexdigest()
    return out


def write_checksums(folder: Path) -> None:
    """Writes ``CHECKSUM_FILE`` in a saved checkpoint folder (atomically)."""
    tmp = folder / (CHECKSUM_FILE + ".tmp")
    tmp.write_text(json.dumps(_file_digests(folder), indent=1, sort_keys=True))
    os.replace(tmp, folder / CHECKSUM_FILE)


def checksum_problem(folder: Path) -> ChecksumMismatch | None:
    """A `ChecksumMismatch` naming the first changed, missing or extra file, or None (also
    when the folder has no checksum file)."""
    path = folder / CHECKSUM_FILE
    if not path.exists():
        return None
    try:
        want = json.loads(path.read_text())
    except ValueError:
        return ChecksumMismatch(f"{path} does not parse")
    got = _file_digests(folder)
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            what = ("missing" if name not in got else "not in the checksums" if name not in want
                    else "changed since it was saved")
            return ChecksumMismatch(f"SHA-256 mismatch: {name} {what}")
    return None


def structure_fingerprint(tree: Any) -> str:
    """A short hash of a pytree's structure, leaf shapes and dtypes (not its values)."""
    leaves, treedef = jax.tree.flatten(tree)
    text = repr((str(treedef), [(tuple(x.shape), str(x.dtype)) for x in leaves]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _incompatibility(meta: dict[str, Any], wanted: dict[str, Any], fingerprint: str) -> str:
    """Why a checkpoint's meta rules it out for this run ("" if it does not)."""
    diff = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
    if diff:
        return ", ".join(f"{k}={a!r} (run: {b!r})" for k, (a, b) in diff.items())
    saved = meta.get("state_structure")
    if saved is not None and saved != fingerprint:
        return ("the saved state has another tree structure, shapes or dtypes (another "
                "lars_jax version or other optimizer/model settings)")
    return ""


def _is_structure_mismatch(error: Exception) -> bool:
    """Orbax's error for a restore target whose tree differs from the saved one."""
    return isinstance(error, _StructureMismatch) or "tree structures do not match" in str(error)


class _StructureMismatch(ValueError):
    """A restored state whose tree, shapes or dtypes differ from the target's."""


def _check_like(state: Any, abstract: Any) -> None:
    s_leaves, s_def = jax.tree.flatten(state)
    a_leaves, a_def = jax.tree.flatten(abstract)
    if s_def != a_def:
        raise _StructureMismatch(f"state structure differs: {s_def} vs {a_def}")
    for s, a in zip(s_leaves, a_leaves, strict=True):
        if s.shape != a.shape or s.dtype != a.dtype:
            raise _StructureMismatch(
                f"array {s.shape}/{s.dtype} where {a.shape}/{a.dtype} expected")
