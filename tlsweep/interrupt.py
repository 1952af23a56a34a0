"""Ctrl-C that is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives. If
that is inside a ``__del__`` or a weakref callback (TensorFlow runs many as an epoch's iterators and
functions are let go), Python prints "Exception ignored" and goes on: the job would run to its end
as if Ctrl-C had never been pressed. So the handler also remembers the request, and every epoch's
end and every batch of the feature cache's build ask again (``check``): a job stops at the latest
one epoch (or one batch) after Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_requested = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextmanager
def handled() -> Iterator[None]:
    """Ctrl-C handled this way inside the block (entered from the main thread, as Python requires)."""
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed, even if the first one was swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt
