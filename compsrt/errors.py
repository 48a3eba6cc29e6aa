"""The one exception type for problems a user can fix (bad file, wrong scale, missing tool), and
the command-line tools' argument parser, whose usage errors are one line too."""
from __future__ import annotations

import argparse
from typing import NoReturn


class CompsrtError(Exception):
    """A user-fixable problem; the message says which file, what is wrong and what to do.

    CLIs catch it and print one line with exit code 2; library callers can catch it too.
    """


def check_asked(path: object, noun: str, arch: str, scale: int, asked_arch: str | None = None,
                asked_scale: int | None = None) -> None:
    """One line if a file's architecture or scale contradicts the one asked (None: any), e.g.
    ``check_asked(p, "checkpoint", "swinir-light", 2, asked_scale=4)`` raises "p: this is an x2
    checkpoint but --scale 4 was asked; use --scale 2".

    Raises:
        CompsrtError: the contradiction, naming the file and the option to change.
    """
    if asked_arch is not None and arch != asked_arch:
        raise CompsrtError(f"{path}: this is a {arch} {noun} but --arch {asked_arch} was asked; use --arch {arch}")
    if asked_scale is not None and scale != asked_scale:
        raise CompsrtError(f"{path}: this is an x{scale} {noun} but --scale {asked_scale} was asked; "
                           f"use --scale {scale}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, as every other user mistake:
    ``<prog>: error: <message> (see <prog> --help)`` on stderr and exit code 2 (argparse's own
    code), without the usage block. Subparsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
