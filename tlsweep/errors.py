"""The one exception type that means "the user can fix this"."""


class TlsweepError(Exception):
    """A problem with the user's input or environment.

    tlsweep prints its message as one line (what is wrong and how to fix it) and exits
    non-zero without a traceback; anything else is a bug and keeps its traceback.
    """
