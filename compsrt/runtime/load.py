"""``load_packed(path)``: a packed checkpoint -> a SwinIR-light whose quantized sites run on integers."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..errors import CompsrtError
from ..model.swinir import SwinIRLight
from ..quant.pack import PackedModel, read_packed
from ..quant.plan import plan_for
from .modules import PackedAttend, PackedLinear


def build_runtime(pm: PackedModel) -> SwinIRLight:
    """Swap the plan's sites of an FP skeleton for packed modules and load the FP tensors."""
    model = SwinIRLight(pm.swinir)
    plan = plan_for(model)
    cfg = pm.quant
    rotate = cfg.rotation == "deploy"
    q = 0
    for grid, codes, mask, dc in zip(pm.grids, pm.codes, pm.masks, pm.dc):
        fp = model.get_submodule(grid.path)
        w_raw, a_raw = pm.qparams[q:q + grid.splits], pm.qparams[q + grid.splits:q + 2 * grid.splits]
        q += 2 * grid.splits
        model.set_submodule(grid.path, PackedLinear(fp.in_features, grid.n, codes, mask, dc, w_raw, a_raw,
                                                    pm.fp[f"{grid.path}.bias"], cfg.bits, rotate))
    for site in plan.attentions:
        model.set_submodule(site.path, PackedAttend(pm.qparams[q:q + 4], cfg.bits, bool(pm.grids[0].dc), rotate))
        q += 4
    folded = {f"{g.path}.bias" for g in pm.grids}   # inside each PackedLinear's epilogue vector
    model.load_state_dict({k: v.float() for k, v in pm.fp.items() if k not in folded}, strict=True)
    model.quant_cfg = cfg
    model.packed_header = pm.header
    return model.eval()


def use_cuda_kernels(model: torch.nn.Module) -> str:
    """On CUDA, route PackedLinear products through csrc/packed_linear.cu; returns "" or why not
    (then they run torch._int_mm, which is slower but the same integers)."""
    try:
        from ..kernels import packed_linear_cuda

        packed_linear_cuda.load_library()
    except (CompsrtError, ImportError, OSError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    for m in model.modules():
        if isinstance(m, PackedLinear):
            m.use_cuda_kernel = True
    return ""


def load_packed(path: Path, scale: int | None = None, device: str | torch.device = "cpu") -> SwinIRLight:
    """The integer runtime of a packed file, on ``device``.

    Raises:
        CompsrtError: a damaged or malformed file, or one of another scale than ``scale``.
    """
    pm = read_packed(Path(path))
    if scale is not None and pm.swinir.scale != scale:
        raise CompsrtError(f"{path}: this is an x{pm.swinir.scale} model but --scale {scale} was asked; "
                           f"use --scale {pm.swinir.scale}")
    model = build_runtime(pm).to(device)
    if torch.device(device).type == "cuda":
        why = use_cuda_kernels(model)
        if why:
            print(f"compsrt: packed linears use torch._int_mm on CUDA (csrc kernel unavailable: {why})",
                  file=sys.stderr)
    return model
