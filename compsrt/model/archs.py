"""The supported architectures by name: config <-> dict (for file headers) and construction.

Two entries, written out: SwinIR-light (:class:`~compsrt.config.SwinIRConfig`) and MambaIRv2-light
(:class:`~compsrt.model.mambairv2.MambaIRv2Config`). Files store a model's config as a plain dict
(:func:`config_dict`) beside its architecture name; :func:`config_from_dict` validates it back.
"""
from __future__ import annotations

from dataclasses import asdict

from torch import nn

from ..config import SwinIRConfig
from .mambairv2 import MambaIRv2Config, MambaIRv2Light
from .swinir import SwinIRLight

ARCHS = ("swinir-light", "mambairv2-light")
_TUPLES = ("depths", "num_heads", "rgb_mean")


def arch_of(model: nn.Module) -> str:
    """The architecture name of a model; ValueError for an unsupported one."""
    if isinstance(model, SwinIRLight):
        return "swinir-light"
    if isinstance(model, MambaIRv2Light):
        return "mambairv2-light"
    raise ValueError(f"unsupported architecture {type(model).__name__}")


def config_dict(model: nn.Module) -> dict:
    return asdict(model.cfg)


def config_from_dict(arch: str, d: dict) -> SwinIRConfig | MambaIRv2Config:
    """The validated config of ``arch`` from :func:`config_dict`'s dict.

    Raises:
        ValueError, TypeError, KeyError: unknown arch, fields or values (the config validates itself).
    """
    cls = {"swinir-light": SwinIRConfig, "mambairv2-light": MambaIRv2Config}[arch]
    if not isinstance(d, dict):
        raise TypeError("model config is not an object")
    d = {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in d.items()}
    return cls(**d)


def build(arch: str, cfg: SwinIRConfig | MambaIRv2Config) -> nn.Module:
    """An untrained FP model of ``arch`` with ``cfg`` (MambaIRv2-light with its default routing)."""
    return SwinIRLight(cfg) if arch == "swinir-light" else MambaIRv2Light(cfg)
