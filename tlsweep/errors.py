"""The exception type that means "the user can fix this", and how to recognise a full disk."""

import errno


class TlsweepError(Exception):
    """A problem with the user's input or environment.

    tlsweep prints its message as one line (what is wrong and how to fix it) and exits
    non-zero without a traceback; anything else is a bug and keeps its traceback.
    """


DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")  # what TensorFlow's own errors say


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota) is full: an OSError, or one of TensorFlow's
    (its SaveV2 and file writers raise their own error types, with the system's message inside)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(error) for text in DISK_FULL_TEXT)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
