"""User-facing errors: anything here is reported as a one-line message, never as a traceback."""

from __future__ import annotations

from .devices import DeviceError
from .modelfiles import ModelFilesError


class InputError(ValueError):
    """Input that the encoder cannot take (wrong type, bad setting, unreadable file, ...)."""


#: Exceptions the command line turns into ``error: <message>`` and a non-zero exit code.
USER_ERRORS: tuple[type[Exception], ...] = (InputError, DeviceError, ModelFilesError)
