"""How the library reports: the ``textrec`` logger, ``TextrecWarning`` and when to draw a progress bar.

The library never prints. Progress lines and notes go to loggers under ``textrec`` (INFO: what is being done;
WARNING: something the user should look at, such as a note that the library wrote into their dataset); problems
in the user's input that do not stop the work are ``warnings.warn(..., TextrecWarning)``. The library installs
no handler: a program that wants these messages configures ``logging`` (``textrec.cli`` shows them on stderr,
``--quiet`` keeping warnings only and ``-v`` adding debug messages). tqdm progress bars draw on stderr only
when it is a terminal and the ``textrec`` logger shows INFO messages (``show_progress``).
"""

from __future__ import annotations

import logging
import sys
import warnings

logger = logging.getLogger("textrec")


class TextrecWarning(UserWarning):
    """A problem in the input that does not stop the work (e.g. items without a text)."""


def warn(message: str) -> None:
    """``message`` as a ``TextrecWarning`` attributed to the caller's caller (the library function's user)."""
    warnings.warn(message, TextrecWarning, stacklevel=3)


def show_progress(asked: bool = True) -> bool:
    """Whether to draw a tqdm bar: ``asked``, stderr is a terminal, and the ``textrec`` logger shows INFO."""
    return asked and sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)
