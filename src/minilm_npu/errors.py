"""User-facing errors: anything here is reported as a one-line message, never as a traceback.

A leaf: it imports nothing (not torch either), so the command line, the config and every layer can raise and catch
these without loading a model stack. :mod:`minilm_npu.devices` and :mod:`minilm_npu.modelfiles` re-export their
own error, so ``from minilm_npu.devices import DeviceError`` keeps working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that the encoder cannot take (wrong type, bad setting, unreadable file, ...)."""


class OutputError(InputError):
    """An output that cannot be written now: locked by another job, read-only, or out of space.

    A subclass of InputError so that every caller reports it the same way: one line, no traceback.
    """


class DeviceError(ValueError):
    """A device string that cannot be honoured on this machine; the message lists what is available."""


class ModelFilesError(ValueError):
    """The model cannot be found, is incomplete, or is not the file it claims to be."""


#: Exceptions the command line turns into ``error: <message>`` and a non-zero exit code.
USER_ERRORS: tuple[type[Exception], ...] = (InputError, DeviceError, ModelFilesError)
