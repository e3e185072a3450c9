"""Failures of the machine's storage (disk full, quota, read-only file system), told apart
from failures of the run.

A run that cannot write its files has nothing wrong with it: once space is freed (or the
folder is writable again) the same command resumes from the last checkpoint, and a sweep
retries such a run on a plain rerun (a diverged run, in contrast, is a result and is not
retried): the trainer raises `lars_jax.runs.errors.StorageError` for them. `storage_problem`
recognises these errors wherever they come from: Python's
`OSError` (``errno`` ENOSPC, EDQUOT, EROFS) and the text of TensorStore's errors, which
Orbax raises as ``ValueError`` (``No space left on device [os_error_code='28']``).

References:
  POSIX ``errno.h``: ENOSPC, EDQUOT, EROFS.
"""

from __future__ import annotations

import errno

# errno -> what the user is told
_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
# the same, as TensorStore and other C++ libraries word them in their messages
_TEXTS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    **{f"os_error_code='{code}'": code for code in _ERRNOS},
}


def storage_problem(error: BaseException) -> str | None:
    """What storage failure caused `error` ("no space left on the device", ...), or None.

    Looks at `error` and the exceptions it was raised from or while handling.

    Example:
      >>> import errno
      >>> storage_problem(OSError(errno.ENOSPC, "No space left on device"))
      'no space left on the device'
      >>> storage_problem(ValueError("Failed to write: [os_error_code='30']"))
      'read-only file system'
      >>> storage_problem(ValueError("bad value")) is None
      True
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ERRNOS:
            return _ERRNOS[current.errno]
        text = str(current)
        for needle, code in _TEXTS.items():
            if needle in text:
                return _ERRNOS[code]
        current = current.__cause__ or current.__context__
    return None
