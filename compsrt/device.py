"""``--device`` as the command-line tools take it."""
from __future__ import annotations

import torch

from .errors import CompsrtError


def parse_device(name: str) -> torch.device:
    """The device named by ``--device``; a user mistake is a one-line CompsrtError, not a traceback."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise CompsrtError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise CompsrtError(f"--device {name!r}: compsrt runs on cpu or cuda[:N], not {dev.type}")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise CompsrtError(f"--device {name!r}: use --device cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CompsrtError(f"--device {name} asked but no CUDA GPU is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CompsrtError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev
