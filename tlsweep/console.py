"""What reaches the terminal: tlsweep's own lines, not the libraries' log noise.

TensorFlow's C++ runtime writes straight to file descriptor 2 (``absl::InitializeLog``, oneDNN,
``cuInit``, ``NodeDef mentions attribute …``), past Python's ``sys.stderr``. ``native_stderr_to``
points that descriptor at the job's log (or nowhere) while Python's ``sys.stderr`` — tracebacks,
tlsweep's ``error:`` lines — stays on the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_terminal: list[int] = []  # a duplicate of the terminal's descriptor 2, once native output is moved away


def native_stderr_to(path: Path | None) -> None:
    """Send what native code writes to descriptor 2 into ``path`` (appended), or discard it (None).

    Python's ``sys.stderr`` keeps writing to the terminal; Python's warnings go to the logging
    system, whose handlers decide where they are shown (the CLI's: the job log only).
    """
    if not _terminal:
        sys.stderr.flush()
        _terminal.append(os.dup(2))
        sys.stderr = open(  # noqa: SIM115  the process's stderr for the rest of its life
            _terminal[0], "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False
        )
        logging.captureWarnings(True)
    target = os.devnull if path is None else str(path)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)


@contextlib.contextmanager
def native_quiet() -> Iterator[None]:
    """Discard what native code writes to descriptor 2 for a while, then give the descriptor back as it was.

    For a process that is not tlsweep's own (a notebook's kernel shows descriptor 2 in its cells): TensorFlow's
    C++ lines at import and first use are dropped there, and the process's stderr is left in place after."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
