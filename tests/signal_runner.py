"""Runs ``python -m fcnquant ARGS`` with a signal sent to itself at a chosen point, so that signal tests are
deterministic: ``python tests/signal_runner.py SIGNAL POINT ARGS...``.

``SIGNAL`` is a name (``SIGINT``, ``SIGTERM``); ``POINT`` is one of

* ``import:MODULE``: when MODULE starts being imported (the interrupt then lands inside that import);
* ``call:MODULE:ATTR``: just before the first call of the function ATTR of MODULE;
* ``after:MODULE:ATTR``: just after its first call returns;
* ``after:MODULE:ATTR=TEXT``: just after the first call whose last argument, as a string, contains TEXT returns.

The signal is a real one (``os.kill`` of this process), handled by whatever handler fcnquant installed.
"""
from __future__ import annotations

import functools
import importlib
import os
import runpy
import signal
import sys


def _fire(sig: int) -> None:
    os.kill(os.getpid(), sig)


def _at_import(sig: int, name: str) -> None:
    class Finder:
        def find_spec(self, fullname, path=None, target=None):
            if fullname == name:
                sys.meta_path.remove(self)
                _fire(sig)
            return None

    sys.meta_path.insert(0, Finder())


def _at_call(sig: int, where: str, after: bool) -> None:
    where, _, text = where.partition("=")
    module_name, attr = where.rsplit(":", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    fired = []

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if not fired and not after:
            fired.append(1)
            _fire(sig)
        out = original(*args, **kwargs)
        if not fired and (not text or (args and text in str(args[-1]))):
            fired.append(1)
            _fire(sig)
        return out

    setattr(module, attr, wrapper)


def main() -> None:
    sig = getattr(signal, sys.argv[1])
    kind, _, where = sys.argv[2].partition(":")
    if kind == "import":
        _at_import(sig, where)
    else:
        _at_call(sig, where, after=kind == "after")
    sys.argv = ["fcnquant", *sys.argv[3:]]
    runpy.run_module("fcnquant", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
