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


class ProgressLines:
    """Progress of long work as a log line every ``every`` seconds, where no bar is drawn (output to a file or a
    pipe: background runs): ``what: done/total (percent), elapsed, about N min left``."""

    def __init__(self, what: str, total: int, every: float = 300.0, enabled: bool = True) -> None:
        import time

        self.what, self.total, self.every, self._clock = what, total, every, time.perf_counter
        self.enabled = enabled and logger.isEnabledFor(logging.INFO) and not sys.stderr.isatty()
        self.start = self.last = self._clock()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now - self.last < self.every or done >= self.total:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / max(done, 1) * (self.total - done)
        logger.info(f"{self.what}: {done:,}/{self.total:,} ({100 * done / self.total:.0f}%), {elapsed / 60:.1f} min, "
                    f"about {left / 60:.0f} min left")
