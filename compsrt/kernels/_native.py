"""Shared plumbing of the ctypes kernel libraries (:mod:`.cpu_kernels`, :mod:`.packed_linear_cuda`):
find their sources, build a shared library into a folder atomically, load the first one that loads,
and the ``python -m`` command that builds one ahead of time.

Each kernel module keeps its own names, flags, folders and ``_bind``; only the mechanics live here.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ..errors import ArgumentParser, CompsrtError


def find_source_dir(sources: Sequence[str], what: str) -> Path:
    """The folder holding all of ``sources``: the checkout's ``csrc/``, else ``compsrt/_csrc/``.

    Args:
        sources: file names that must all be there.
        what: how the error names them.
    Raises:
        CompsrtError: neither folder holds them (a broken install).
    """
    here = Path(__file__).resolve()
    checkout, wheel = here.parents[2] / "csrc", here.parents[1] / "_csrc"
    for folder in (checkout, wheel):
        if all((folder / s).is_file() for s in sources):
            return folder
    raise CompsrtError(f"{what} not found in {checkout} or {wheel}: "
                       "reinstall compsrt (pip install .) from a full checkout")


def build_library(compiler_cmd: Sequence[str], out_dir: Path, lib_name: str, tool: str) -> Path:
    """Run ``compiler_cmd + ["-o", tmp]`` and move the result to ``out_dir / lib_name`` atomically
    (a concurrent loader never sees a half-written file; a failed build leaves nothing behind).

    Args:
        compiler_cmd: the compiler and its arguments, without the output option.
        out_dir: the output folder (created).
        lib_name: the library's file name.
        tool: the compiler's name in the error message.
    Returns:
        The path of the library.
    Raises:
        RuntimeError: the compiler failed (its stderr is in the message).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / lib_name
    tmp = out / f".{lib_name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    cmd = [*compiler_cmd, "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load_existing(folders: Iterable[Path], lib_name: str,
                  bind: Callable[[ctypes.CDLL], ctypes.CDLL]) -> tuple[Optional[ctypes.CDLL], list[str]]:
    """The first ``folder / lib_name`` that exists and loads (and binds: ``bind`` may raise OSError),
    in order; else None.

    Returns:
        (the bound library or None, ``"path: error"`` of each file that exists but does not load,
        e.g. a prebuilt library from a machine with a newer glibc).
    """
    unloadable = []
    for folder in folders:
        path = Path(folder) / lib_name
        if path.is_file():
            try:
                return bind(ctypes.CDLL(str(path))), unloadable
            except OSError as e:
                unloadable.append(f"{path}: {e}")
    return None, unloadable


def build_main(argv: Optional[Sequence[str]], module: str, description: str,
               build: Callable[[argparse.Namespace], Path],
               add_options: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """The ``main`` of ``python -m compsrt.kernels.<module>``: parse argv, run ``build(args)`` (which
    builds the library ahead of time) and print the library's path.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
        module: the kernel module's name, for the usage line and the error message.
        description: the ``--help`` text.
        build: builds the library into ``args.out_dir`` (None: the module's prebuilt folder) and
            returns its path.
        add_options: adds the module's own options (listed before ``--out-dir``).
    Returns:
        0; or 2 after a ``<module>: error: ...`` message on stderr when ``build`` raises
        CompsrtError (no compiler), RuntimeError (the compiler failed) or ValueError (a bad option).
    """
    parser = ArgumentParser(prog=f"python -m compsrt.kernels.{module}", description=description)
    if add_options is not None:
        add_options(parser)
    parser.add_argument("--out-dir", type=Path, help="output folder (default: the prebuilt folder)")
    args = parser.parse_args(argv)
    try:
        path = build(args)
    except (CompsrtError, RuntimeError, ValueError) as e:
        print(f"{module}: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
