"""The errors and warnings of the trainer and its tools, one place for all of them.

The command line (`lars_jax.runs.cli`) and the sweep (`lars_jax.runs.sweep`) catch them by
type: a `ConfigError` is a bad command line, config file or config value (one line, exit
status 2, before any compute); a `RunError` is an expected failure of a run (one line, exit
status 1; a sweep records it and goes on). This module imports nothing, so every layer may
raise them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad command line, config file or config value; the message names the field."""


class ConfigWarning(UserWarning):
    """A config value with no effect in its run, which a sweep's base config may mean."""


class RunError(RuntimeError):
    """An expected failure of a run (the command prints it as one line, exit status 1)."""


class NonFiniteError(RunError):
    """Training stopped: NaN/Inf loss, gradients or parameters (``nan_policy="stop"``), or
    more than ``max_skipped_fraction`` of the steps skipped (``nan_policy="skip"``)."""


class CheckpointError(RunError):
    """No checkpoint in the workdir could be restored."""


class WorkdirLockedError(RunError):
    """Another live process holds the workdir's lock (a sweep skips the run as busy)."""


class StorageError(RunError):
    """A run stopped because its files cannot be written (disk full, quota, read-only file
    system; see `lars_jax.runs.storage`). Nothing of the run is lost and the same command
    resumes once the cause is gone; a sweep runs such a run again on a plain rerun."""
