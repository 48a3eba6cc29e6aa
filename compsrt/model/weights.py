"""Loading FP SwinIR-light weights: official ``.pth`` files and our safetensors, one loader.

Official checkpoints are ``{'params': state_dict}`` pickles; they are opened with
``torch.load(weights_only=True)``, which refuses arbitrary objects. Our own files are plain
safetensors state dicts with the official key names.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from ..config import SwinIRConfig
from ..errors import CompsrtError
from .swinir import SwinIRLight

# Buffers that official files carry but that we recompute (per input size or once).
_DERIVED_SUFFIXES = ("attn_mask", "relative_position_index")


def bundled_weights(scale: int, arch: str = "swinir-light") -> Path:
    """Path of the FP weights shipped inside the package for ``arch`` at ``scale``."""
    name = {"swinir-light": f"swinir_light_x{scale}.safetensors",
            "mambairv2-light": f"mambairv2_light_x{scale}.safetensors"}[arch]
    path = Path(str(resources.files("compsrt") / "weights" / name))
    if not path.is_file():
        raise CompsrtError(f"no bundled {arch} weights for x{scale} ({path} is missing); pass --weights FILE")
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors or an official ``.pth`` (``params``/``params_ema``)."""
    path = Path(path)
    if not path.is_file():
        raise CompsrtError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CompsrtError:
        raise
    except Exception as e:  # corrupt file, pickle refused by weights_only, wrong format
        raise CompsrtError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(obj, dict):
        for key in ("params", "params_ema", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CompsrtError(f"{path}: not a state dict (expected {{'params': state_dict}} or a tensor dict)")
    for k, v in obj.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CompsrtError(f"{path}: tensor {k} holds NaN or Inf; the weights are damaged")
    return obj


def infer_swinir_config(sd: dict[str, Tensor], source: str = "weights") -> SwinIRConfig:
    """Derive scale, width, depths and heads from the tensors themselves, never a filename."""
    if "upsample.0.weight" not in sd or "conv_first.weight" not in sd:
        arch = "MambaIRv2-light" if any(".assm." in k or "route" in k for k in sd) else "an unknown architecture"
        raise CompsrtError(f"{source}: not SwinIR-light weights (looks like {arch}); "
                           "use --arch mambairv2-light or pass a SwinIR-light file")
    out_ch = sd["upsample.0.weight"].shape[0]
    in_ch = sd["conv_first.weight"].shape[1]
    scale = round((out_ch / in_ch) ** 0.5)
    if scale * scale * in_ch != out_ch or scale not in (2, 3, 4):
        raise CompsrtError(f"{source}: upsample.0.weight has {out_ch} output channels, not 3*s^2 for s in 2,3,4")
    depths, heads = [], []
    i = 0
    while f"layers.{i}.conv.weight" in sd:
        j = 0
        while f"layers.{i}.residual_group.blocks.{j}.norm1.weight" in sd:
            j += 1
        table = sd.get(f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")
        depths.append(j)
        heads.append(table.shape[1] if table is not None else 6)
        i += 1
    if not depths:
        raise CompsrtError(f"{source}: no layers.* tensors: not SwinIR-light weights")
    try:
        return SwinIRConfig(scale=scale, in_chans=in_ch, embed_dim=sd["conv_first.weight"].shape[0],
                            depths=tuple(depths), num_heads=tuple(heads))
    except ValueError as e:
        raise CompsrtError(f"{source}: not SwinIR-light weights this package runs ({e})") from None


def load_into(model: torch.nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """Strict load of every learned tensor, with one clear message on any mismatch."""
    sd = {k: v for k, v in sd.items() if not k.endswith(_DERIVED_SUFFIXES)}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}, e.g. {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            parts.append(f"wrong shape for {len(wrong)}, e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        raise CompsrtError(f"{source}: does not match the model: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def load_swinir(path: Path, scale: int | None = None) -> SwinIRLight:
    """Build SwinIR-light from a weights file (official ``.pth`` or safetensors), in eval mode.

    Args:
        path: the weights file.
        scale: the scale the caller expects; a file of another scale is an error.
    Raises:
        CompsrtError: unreadable file, another architecture or scale, missing/extra tensors.
    """
    sd = read_state_dict(path)
    cfg = infer_swinir_config(sd, str(path))
    if scale is not None and cfg.scale != scale:
        raise CompsrtError(f"{path}: these are x{cfg.scale} weights but --scale {scale} was asked; "
                           f"use --scale {cfg.scale} or x{scale} weights")
    model = SwinIRLight(cfg)
    load_into(model, sd, str(path))
    return model.eval()


def save_state_dict(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None,
                    tensors: dict[str, Tensor] | None = None) -> None:
    """Write the model's learned tensors (or ``tensors``, e.g. in an official layout) as fp32
    safetensors, atomically."""
    from safetensors.torch import save_file

    from ..io import atomic_path

    sd = {k: v.detach().float().contiguous().cpu() for k, v in (tensors or model.state_dict()).items()}
    with atomic_path(Path(path)) as tmp:
        save_file(sd, str(tmp), metadata=metadata)
