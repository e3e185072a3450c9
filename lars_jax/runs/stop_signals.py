"""SIGINT, SIGTERM and SIGHUP as a request to stop at the next safe point.

Inside `StopSignals` (installed by the ``lars-jax`` command at its start and by
`lars_jax.train.train`), the first SIGINT (Ctrl-C), SIGTERM (what cluster schedulers
send on preemption) or SIGHUP (the terminal or ssh session of the run was closed) only
records the request and prints one line. The training loop
checks it between steps (and before the first one): it saves a checkpoint of the current
step and raises `TrainingInterrupted`, so the same command resumes exactly there. No
exception is ever raised inside JAX, Orbax or TFDS code (which is what made an early
Ctrl-C end in SIGSEGV). A second signal quits at once (`os._exit`), for a run stuck
before its next safe point; checkpoints stay consistent (Orbax renames a finished one into
place) and the workdir lock dies with the process.

Multi-process runs: `jax.distributed.initialize` installs JAX's own SIGTERM handler (its
preemption notifier), which tells every process of the run. There the training loop asks
`preemption_sync_point` at every iteration (JAX's
`multihost_utils.reached_preemption_sync_point`): it becomes true at the same iteration
on every process, which then all checkpoint that step together and stop as after a
SIGTERM here (exit 143). A SIGINT or SIGHUP must reach every process at once (as a
terminal's Ctrl-C does for a process group); a signal reaching only some of them leaves the
others waiting in the next collective.

The exit status is the shell's convention, ``128 + signal``: 130 for SIGINT, 143 for
SIGTERM, 129 for SIGHUP. After a SIGHUP the terminal may be gone: when the line cannot be
written there, standard output and error are sent to ``/dev/null`` from then on, so the
run still checkpoints and exits 129 instead of failing on its next print (run it under
``nohup`` or in ``tmux`` to keep the messages).

References:
  Python `signal` module documentation (handlers run in the main thread).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_requested: int | None = None
_depth = 0


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped on SIGINT, SIGTERM or SIGHUP (a KeyboardInterrupt, so ``except Exception``
    in a sweep does not record it as a failed run).

    Attributes:
      signum: the signal.
      exit_code: ``128 + signum``.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _say(text: str) -> None:
    """Writes `text` to stderr; if it cannot be written (a hung-up terminal), stdout and
    stderr go to /dev/null from now on, so that later prints do not fail."""
    try:
        os.write(2, text.encode())
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(null, fd)
        os.close(null)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    del frame
    if _requested is not None:
        _say(f"\nlars_jax: second {signal_name(signum)}: quitting now\n")
        os._exit(128 + signum)
    _requested = signum
    _say(f"\nlars_jax: {signal_name(signum)} received: stopping after the current step "
         "(send it again to quit at once)\n")


def requested() -> int | None:
    """The signal received inside `StopSignals`, or None."""
    return _requested


def raise_if_requested(where: str) -> None:
    """Raises `TrainingInterrupted` if a signal arrived (`where`: e.g. "before training")."""
    if _requested is not None:
        raise TrainingInterrupted(_requested, f"{signal_name(_requested)} {where}: nothing "
                                  "to save; run the same command again")


_preemption_service: bool | None = None  # None: not asked yet in this process


def preemption_sync_point(iteration: int) -> bool:
    """Whether every process of a multi-process run has reached the iteration at which to
    checkpoint after a SIGTERM (JAX's preemption sync point); always False in a single
    process or with JAX's preemption service off.

    Args:
      iteration: the loop iteration, counted from 0 at the start of this process's run;
        call it at every iteration, with the same count on every process.

    References:
      JAX, `jax.experimental.multihost_utils.reached_preemption_sync_point`.
    """
    global _preemption_service
    if _preemption_service is False:
        return False
    import jax

    if jax.process_count() == 1:
        return False
    from jax.experimental import multihost_utils

    try:
        reached = multihost_utils.reached_preemption_sync_point(iteration)
    except RuntimeError:  # jax_enable_preemption_service off: our SIGTERM handler stays
        _preemption_service = False
        return False
    _preemption_service = True
    return reached


class StopSignals:
    """Context manager: SIGINT/SIGTERM/SIGHUP set a flag instead of raising (main thread only;
    nested uses share one flag; the previous handlers come back on exit)."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        global _depth, _requested
        if threading.current_thread() is not threading.main_thread():
            return self
        if _depth == 0:
            _requested = None
            self._previous = {s: signal.getsignal(s) for s in SIGNALS}
            for s in SIGNALS:
                signal.signal(s, _handler)
        _depth += 1
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _depth
        if threading.current_thread() is not threading.main_thread():
            return
        _depth -= 1
        if _depth == 0:
            for s, previous in self._previous.items():
                signal.signal(s, previous)
