"""One entry point that turns (--arch, --weights or --model, --scale) into a ready model.

Every CLI goes through :func:`load_model`, so FP weights (official ``.pth`` or ours), packed
CompSRT checkpoints (the integer runtime), calibrated fake-quant checkpoints and
MambaIRv2-light all load the same way. The package bundles its models as
``compsrt/weights/<name>.safetensors`` (:func:`bundled_models`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import CompsrtError
from .model.archs import ARCHS  # re-exported: the CLIs take it from here
from .model.weights import bundled_weights, load_swinir


def bundled_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("compsrt") / "weights"))


def bundled_models() -> dict[str, Path]:
    """Name -> file of every bundled model (FP and packed), sorted by name."""
    return {p.stem: p for p in sorted(bundled_dir().glob("*.safetensors"))}


def bundled_model(name: str) -> Path:
    """The file of the bundled model ``name`` (e.g. ``swinir_light_x2_w4``)."""
    models = bundled_models()
    if name not in models:
        raise CompsrtError(f"--model {name!r} is not bundled; choose one of {', '.join(models)} (see --list-models)")
    return models[name]


def default_infer_model(scale: int, arch: str) -> Path | None:
    """compsrt-infer's default: the bundled packed W4 SwinIR-light of ``scale`` (None = the FP default)."""
    if arch != "swinir-light":
        return None
    path = bundled_dir() / f"swinir_light_x{scale}_w4.safetensors"
    return path if path.is_file() else None


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


def load_model(weights: Path | None, scale: int, arch: str = "swinir-light",
               device: str | torch.device = "cpu") -> nn.Module:
    """Build the model for ``arch`` at ``scale`` from ``weights`` (None = the bundled FP weights),
    on ``device`` (packed models there pick their CUDA kernels).

    Raises:
        CompsrtError: unknown arch, missing file, weights of another scale or architecture.
    """
    if arch not in ARCHS:
        raise CompsrtError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    path = Path(weights) if weights is not None else bundled_weights(scale, arch)
    if not path.is_file():
        raise CompsrtError(f"{path}: weights file not found")
    kind = checkpoint_kind(path)
    if kind == "fp" and arch == "mambairv2-light":
        from .model.mambairv2 import load_mambairv2

        return load_mambairv2(path, scale).eval().to(device)
    if kind == "fp":
        return load_swinir(path, scale).to(device)
    if kind == "compsrt-packed":
        from .runtime import load_packed

        return load_packed(path, scale, device, arch=arch)
    if kind == "compsrt-calibrated":
        from .quant.compress import load_calibrated

        return load_calibrated(path, scale, arch=arch).eval().to(device)
    raise CompsrtError(f"{path}: unknown checkpoint format {kind!r}; is this compsrt version too old?")


def describe_weights(path: Path) -> tuple[str, int]:
    """(arch, scale) of a weights file, read without building the model.

    FP files (official ``.pth`` or safetensors) are described from their tensors' names and
    shapes (safetensors: the shapes alone, no data read; the same inference as the loaders);
    packed and calibrated checkpoints from their JSON header: ``"arch"`` and the model config
    under ``"model"`` (``"swinir"`` in files written before MambaIRv2-light could be quantized).

    Raises:
        CompsrtError: a missing, unreadable or malformed file, or weights of no known architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CompsrtError(f"{path}: weights file not found")
    kind = checkpoint_kind(path)
    if kind == "fp":
        return _describe_fp(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:   # checkpoint_kind has just read this header
        header = json.loads(f.metadata()["compsrt"])
    cfg = header.get("model", header.get("swinir"))   # a dict: checkpoint_kind read its "format"
    arch, scale = header.get("arch"), cfg.get("scale") if isinstance(cfg, dict) else None
    if arch not in ARCHS:
        raise CompsrtError(f"{path}: a {kind} file of architecture {arch!r}, not one of {', '.join(ARCHS)}; "
                           "is this compsrt version too old?")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale not in (2, 3, 4):
        raise CompsrtError(f"{path}: malformed compsrt header (model scale {scale!r}, not 2, 3 or 4); "
                           "the file is damaged or not ours")
    return arch, scale


def _describe_fp(path: Path) -> tuple[str, int]:
    """(arch, scale) of FP weights from their tensors; safetensors as shapes only (meta tensors)."""
    from .model.mambairv2 import infer_mambairv2_config
    from .model.weights import infer_swinir_config, read_state_dict

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                sd = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        except Exception as e:   # safetensors raises its own error types for every malformed byte
            raise CompsrtError(f"{path}: cannot read weights ({str(e).splitlines()[0][:160]})") from None
    else:
        sd = read_state_dict(path)
    if any(".assm." in k for k in sd):
        return "mambairv2-light", infer_mambairv2_config(sd, str(path)).scale
    return "swinir-light", infer_swinir_config(sd, str(path)).scale
