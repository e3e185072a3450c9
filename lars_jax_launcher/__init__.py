"""The ``lars-jax`` console script's entry point, importable without importing lars_jax.

Importing ``lars_jax`` loads jax and flax, which takes seconds. A Ctrl-C (SIGINT), a
SIGTERM or a SIGHUP in that window used to end in Python's own ``KeyboardInterrupt``
traceback (or be lost): the handlers of `lars_jax.runs.stop_signals` can only be installed
once lars_jax is imported. This module installs a recording handler first, imports the
command line, and if a signal came during the import, stops with the same one-line message
and exit status (``128 + signal``) as a stop before the first training step; otherwise it
runs `lars_jax.runs.cli.main`, which takes over the signals.

References:
  Python `signal` module documentation (handlers run in the main thread).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``lars-jax`` with SIGINT/SIGTERM/SIGHUP recorded from the first instant.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
      The exit status of `lars_jax.runs.cli.main`, or ``128 + signal`` for a signal that
      arrived while lars_jax was being imported.
    """
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        from lars_jax.runs import cli
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    args = list(sys.argv[1:] if argv is None else argv)
    if received:
        name = signal.Signals(received[0]).name
        command = f"lars-jax {args[0]}" if args else "lars-jax"
        print(f"{command}: {name} before training started: nothing to save; run the same "
              "command again", file=sys.stderr)
        return 128 + received[0]
    return cli.main(args)
