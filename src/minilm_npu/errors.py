"""User-facing errors: anything here is reported as a one-line message, never as a traceback."""

from __future__ import annotations

from .devices import DeviceError
from .modelfiles import ModelFilesError


class InputError(ValueError):
    """Input that the encoder cannot take (wrong type, bad setting, unreadable file, ...)."""


class OutputError(InputError):
    """An output that cannot be written now: locked by another job, read-only, or out of space.

    A subclass of InputError so that every caller reports it the same way: one line, no traceback.
    """


#: Exceptions the command line turns into ``error: <message>`` and a non-zero exit code.
USER_ERRORS: tuple[type[Exception], ...] = (InputError, DeviceError, ModelFilesError)
