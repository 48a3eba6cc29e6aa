"""Tiny models and data shared by tests/test_distributed.py and the ranks it starts (tests/dist_worker.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from compsrt.config import CalibConfig
from compsrt.load import load_model
from compsrt.model.weights import save_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent / "calib"))
from test_calibrate import fit_tiny_model, smooth_images  # noqa: E402

# Graphable (no recompute); a batch of 4 splits 2 + 2 over two ranks.
CFG = CalibConfig(iters=5, batch=4, patch=16, calib_batch=2, val_every=2, val_patches=1, recompute=False)


def tiny_pairs():
    return smooth_images(4, 64, 7)


def write_tiny_fp(arch: str, path: Path) -> Path:
    """A tiny FP model of ``arch`` as a weights file: SwinIR-light briefly fitted (tests/calib),
    MambaIRv2-light seeded with trained-looking layer scales (as tests/quant/test_mambairv2_quant.py)."""
    if arch == "swinir-light":
        save_state_dict(fit_tiny_model(), path)
        return path
    from compsrt.model.mambairv2 import MambaIRv2Config, MambaIRv2Light

    torch.manual_seed(0)
    m = MambaIRv2Light(MambaIRv2Config(scale=2, embed_dim=36, d_state=4, depths=(2,), num_heads=(2,), window_size=4,
                                       inner_rank=8, num_tokens=8)).eval()
    with torch.no_grad():
        for b in m.layers:
            for lay in b.residual_group.layers:
                lay.scale1.fill_(1.0)
                lay.scale2.fill_(1.0)
    save_state_dict(m, path)
    return path


def tiny_fp(path: Path, arch: str) -> torch.nn.Module:
    return load_model(path, 2, arch)
