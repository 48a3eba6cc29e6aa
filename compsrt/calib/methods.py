"""The calibration methods a user selects by name: one explicit table, nothing registered."""
from __future__ import annotations

from dataclasses import replace

from ..config import QuantConfig

# name -> (rotation, decompose, train_bounds)
METHODS: dict[str, dict] = {
    # Hadamard rotation + scalar decomposition, every quantizer parameter trained (the default).
    "compsrt": dict(rotation="deploy", decompose=True, train_bounds=True),
    # The 2DQuant baseline: no rotation, no decomposition, bounds trained.
    "2dquant": dict(rotation="none", decompose=False, train_bounds=True),
    "rotation-only": dict(rotation="deploy", decompose=False, train_bounds=True),
    "decomposition-only": dict(rotation="none", decompose=True, train_bounds=True),
    # The paper's Table 7: rotation, bounds frozen after DOBI, only s2 and z2 trained.
    "tuning-only": dict(rotation="deploy", decompose=True, train_bounds=False),
}


def method_config(name: str, bits: int, official_rotation: bool = False, rotate: str = "both",
                  prune: float = 0.0, prune_mode: str = "unstructured", exact_dc: bool | None = None,
                  row_mean: bool = False) -> QuantConfig:
    """The QuantConfig of a named method, optionally in the official rotate-back mode.

    ``rotate="weights"`` (rotate weights, not activations: Figure 6) exists only in the
    official mode, where each operand is rotated back on its own; in the deployable mode a
    product is only correct if both operands are rotated.

    ``exact_dc`` (None = the default, on) keeps or quantizes the rotated DC coefficient: only
    with the deployable rotation. ``row_mean`` keeps each operand row's mean in FP: only for
    the methods without rotation (QuantConfig.row_mean). Either elsewhere is a ValueError.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    if rotate not in ("both", "weights"):
        raise ValueError(f"rotate must be 'both' or 'weights', got {rotate!r}")
    if rotate == "weights" and not official_rotation:
        raise ValueError("--rotate weights needs --official-rotation (rotating one operand of a product "
                         "is only meaningful when each operand is rotated back)")
    cfg = QuantConfig(bits=bits, prune=prune, prune_mode=prune_mode, **METHODS[name])
    if official_rotation and cfg.rotation != "none":
        cfg = replace(cfg, rotation="official", rotate_acts=rotate == "both")
    if exact_dc is not None:
        if cfg.rotation != "deploy":
            raise ValueError(f"--exact-dc/--no-exact-dc needs the deployable rotation; method {name}"
                             + (" with --official-rotation" if official_rotation else "")
                             + " has none (use compsrt, rotation-only or tuning-only without --official-rotation)")
        cfg = replace(cfg, exact_dc=exact_dc)
    if row_mean:
        if cfg.rotation != "none":
            raise ValueError(f"--row-mean needs a method without rotation (2dquant, decomposition-only); "
                             f"method {name} rotates (its exact DC is the rotated counterpart: --exact-dc)")
        cfg = replace(cfg, row_mean=True)
    return cfg
