"""Errors meant for people, not for tracebacks.

Every layer raises :class:`HamucoError` (or a subclass) for problems the user can fix:
a missing file, a malformed capture, a refused pickle. The command line prints the message
and exits non-zero without a traceback.
"""


class HamucoError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ModelFileError(HamucoError):
    """A hand-model file is missing, malformed or refused."""
