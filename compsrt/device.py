"""``--device`` as the command-line tools take it."""
from __future__ import annotations

import torch

from .errors import CompsrtError


def parse_device(name: str) -> torch.device:
    """The device named by ``--device``; a user mistake is a one-line CompsrtError, not a traceback."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CompsrtError(f"--device {name!r} is not a device name; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CompsrtError("--device cuda asked but no CUDA GPU is available; use --device cpu")
    return dev
