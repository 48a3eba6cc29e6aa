"""The command-line tools' one way of ending on a user mistake or Ctrl-C.

Each tool's ``main`` parses its arguments, then hands the work to :func:`run_cli`: a
:class:`~compsrt.errors.CompsrtError` (or another error type the tool names) becomes one line
``<prog>: error: <message>`` on stderr and exit code 2; Ctrl-C becomes one line
``<prog>: interrupted; <what is left>`` and exit code 130.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import CompsrtError

USER_ERRORS = (CompsrtError, OSError)


def run_cli(prog: str, body: Callable[[], int], interrupted: str | None = None,
            errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """``body()``'s exit code, or 2 after one error line, or 130 after one interrupted line.

    Args:
        prog: the name the lines start with, e.g. ``"compsrt.eval"``.
        body: the tool's work; returns its exit code.
        interrupted: what the interrupted line says is left (e.g. ``"nothing written"``); None
            lets Ctrl-C propagate as Python's KeyboardInterrupt.
        errors: the exception types reported as user mistakes.

    Example:
        >>> run_cli("compsrt.pack", lambda: pack(args), interrupted="nothing written")
    """
    try:
        return body()
    except errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
