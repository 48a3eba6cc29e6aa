"""Resumable run states, one format for FP training and calibration.

A state is one safetensors file, written atomically: its tensors (model, optimizer moments, ...)
and a metadata block whose every value is JSON (the iteration, a report, the run's settings).
No pickle. :func:`write_state` and :func:`read_state` know nothing of what the keys mean; each
caller (:mod:`compsrt.train`, :mod:`compsrt.calib.calibrate`) checks its own.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from .errors import CompsrtError
from .io import atomic_path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_state(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (as contiguous CPU tensors) and ``meta`` (each value as JSON) to ``path``
    atomically: a crash leaves the previous state whole."""
    from safetensors.torch import save_file

    t = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(t, str(tmp), metadata={k: json.dumps(v, sort_keys=True) for k, v in meta.items()})


def read_state(path: Path, what: str, advice: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and decoded metadata of a state file.

    Raises:
        CompsrtError: one line, ``"<path>: unreadable <what> (<why>); <advice>"`` for a file that
            is not a safetensors file (empty, truncated, something else) and ``"<path>: damaged
            <what> (its header); <advice>"`` for metadata that is not JSON.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:   # empty, truncated or not a safetensors file
        why = (str(e).splitlines() or [type(e).__name__])[0][:100]
        raise CompsrtError(f"{path}: unreadable {what} ({why}); {advice}") from None
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except ValueError:
        raise CompsrtError(f"{path}: damaged {what} (its header); {advice}") from None
    return tensors, meta
