"""Errors a user can act on.

Every error that reaches the command line is one of these: the CLI prints ``textrec: error: <message>``
and exits with status 2, without a traceback. The message names the problem and where it is (a file and
line, a config key, a user or item id).
"""

from __future__ import annotations


class TextrecError(Exception):
    """Base class for errors caused by input (files, configs, ids), not by a bug.

    Its message is always one line: line breaks that came from the input (a header swallowed by an open
    quote, a library's multi-line message) are shown escaped.
    """

    def __str__(self) -> str:
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class DataError(TextrecError):
    """A malformed, missing, empty or inconsistent data file or dataset directory."""


class ConfigError(TextrecError):
    """An unknown config key, a value of the wrong type or out of range."""


class NotFoundError(TextrecError):
    """An unknown user, item, model name or run directory."""


class CheckpointError(TextrecError):
    """A run's weights or training state that are damaged, were changed after training, or fit another config."""


def storage_message(error: OSError) -> str:
    """``<path>: <reason>`` for a failed read or write (read-only, no space, permission, wrong kind of path)."""
    paths = [str(f) for f in (error.filename, error.filename2) if f is not None]
    reason = error.strerror or str(error)
    return f"{' -> '.join(paths)}: {reason}" if paths else reason
