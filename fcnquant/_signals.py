"""One signal policy for the command line: SIGTERM ends a run the way Ctrl-C does.

The ``fcnquant`` entry point installs :func:`raise_terminated` for SIGTERM, so a terminated run raises
:class:`Terminated` (a ``KeyboardInterrupt``) wherever it is, and every cleanup that runs on Ctrl-C (temporary
folders, staged artifacts) runs on SIGTERM too. :func:`deferred` holds both signals back for the few instructions
that must not be cut in two (renaming a set of artifacts into place).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: the signals :func:`deferred` holds back
HELD = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised like Ctrl-C's KeyboardInterrupt so the same cleanups run."""


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler of the command line: raises :class:`Terminated`."""
    raise Terminated()


def exit_status(exc: KeyboardInterrupt) -> tuple[int, str]:
    """Returns (exit status, one line for stderr) for an interrupted run: 130 for Ctrl-C, 143 for SIGTERM
    (128 + the signal number, as a shell reports a process killed by it)."""
    if isinstance(exc, Terminated):
        return 128 + signal.SIGTERM, "terminated"
    return 128 + signal.SIGINT, "interrupted"


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Makes SIGTERM raise :class:`Terminated` inside the block (main thread only; a handler someone else set
    is kept)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Holds SIGINT and SIGTERM back while the block runs, then delivers the first one that arrived.

    Only the main thread receives Python signal handlers, so elsewhere (and where a handler was installed
    outside Python) the block runs unprotected.
    """
    old = {s: signal.getsignal(s) for s in HELD}
    if threading.current_thread() is not threading.main_thread() or any(h is None for h in old.values()):
        yield
        return
    caught: list[int] = []

    def hold(signum, frame) -> None:
        caught.append(signum)

    for s in HELD:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])  # now the handler that was in place runs (or the default action)
