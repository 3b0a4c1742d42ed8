"""``python -m fcnquant`` and the ``fcnquant`` command.

Ctrl-C or SIGTERM at any moment, while the modules are still being imported included, ends the run with one line
on stderr and status 130 (143 for SIGTERM), never a traceback; the cleanups of the run happen first.
"""
from __future__ import annotations

import sys

from fcnquant._signals import exit_status, sigterm_raises


def entry(argv: list[str] | None = None) -> int:
    """Runs the command line (``fcnquant.cli.main``) and returns the exit status."""
    try:
        with sigterm_raises():
            from fcnquant.cli import main

            return main(argv)
    except KeyboardInterrupt as exc:
        status, word = exit_status(exc)
        print(word, file=sys.stderr)
        return status


if __name__ == "__main__":
    raise SystemExit(entry())
