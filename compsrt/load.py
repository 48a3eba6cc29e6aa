"""One entry point that turns (--arch, --weights, --scale) into a ready model.

Every CLI goes through :func:`load_model`, so FP weights (official ``.pth`` or ours),
calibrated CompSRT checkpoints and MambaIRv2-light all load the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .errors import CompsrtError
from .model.weights import bundled_weights, load_swinir

ARCHS = ("swinir-light", "mambairv2-light")


def checkpoint_kind(path: Path) -> str:
    """'fp' for plain weights, else the ``format`` named in a compsrt safetensors header."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return "fp"
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CompsrtError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
    header = meta.get("compsrt")
    if header is None:
        return "fp"
    try:
        return str(json.loads(header)["format"])
    except (ValueError, KeyError, TypeError):
        raise CompsrtError(f"{path}: malformed compsrt header in the safetensors metadata") from None


def load_model(weights: Path | None, scale: int, arch: str = "swinir-light") -> nn.Module:
    """Build the model for ``arch`` at ``scale`` from ``weights`` (None = the bundled FP weights).

    Raises:
        CompsrtError: unknown arch, missing file, weights of another scale or architecture.
    """
    if arch not in ARCHS:
        raise CompsrtError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    path = Path(weights) if weights is not None else bundled_weights(scale, arch)
    if not path.is_file():
        raise CompsrtError(f"{path}: weights file not found")
    if arch == "mambairv2-light":
        from .model.mambairv2 import load_mambairv2

        return load_mambairv2(path, scale).eval()
    kind = checkpoint_kind(path)
    if kind == "fp":
        return load_swinir(path, scale)
    if kind == "compsrt-calibrated":
        from .quant.compress import load_calibrated

        return load_calibrated(path, scale).eval()
    raise CompsrtError(f"{path}: unknown checkpoint format {kind!r}; is this compsrt version too old?")
