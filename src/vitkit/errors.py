"""The one family of vitkit errors.

Every error vitkit raises on purpose is a :class:`VitkitError`, whose message names the bad value
and says what to do. It is a ``ValueError``, so code written against earlier versions, which
caught ``ValueError``, keeps working; the command line catches ``VitkitError`` in one place and
prints its message as one line.
"""

from __future__ import annotations


class VitkitError(ValueError):
    """A user-facing error: the message names what was wrong and how to fix it."""


class ConfigError(VitkitError):
    """A model, training or preprocessing setting that is out of range or inconsistent."""


class InputError(VitkitError):
    """An input the model cannot take: the wrong number of dimensions, channels or size."""


class ExportError(VitkitError):
    """A model that cannot be exported, or an export that does not match the model."""


class CheckpointError(VitkitError):
    """A checkpoint that is missing, corrupt or does not match its config."""


class InteropError(CheckpointError):
    """A foreign checkpoint that cannot be read, or whose architecture vitkit cannot express."""


class DataError(VitkitError):
    """A dataset or image that cannot be found or read; the message says which file and how to fix it."""


class DistributedError(VitkitError):
    """The process group could not form, or lost a member; the message says which and what to do."""


class DivergedError(VitkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ServeError(VitkitError):
    """A request the web server refuses, with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
