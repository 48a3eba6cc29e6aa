"""``load_packed(path)``: a packed checkpoint -> its model (SwinIR-light or MambaIRv2-light) whose
quantized Linear and attention sites run on integers; weight-only sites (MambaIRv2's scan
projections, multiplied with FP activations by the model itself) are dequantized once, here."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from torch import Tensor, nn

from ..errors import CompsrtError, check_asked
from ..kernels.hadamard import hadamard_ref
from ..model.archs import build
from ..quant.pack import LayerGrid, PackedModel, read_packed
from ..quant.plan import plan_for
from .modules import PackedAttend, PackedLinear, runtime_params


def dequantized_weight(grid: LayerGrid, codes: Tensor, mask: Tensor | None, offset: Tensor | None, raw: Tensor,
                       bits: int, rotated: bool, row_mean: bool, in_features: int) -> Tensor:
    """The (1, rows, in) FP weight a weight site's fake quantization gave: codes dequantized
    (s q + z, pruned ones 0), the FP offset put back (the exact-DC column, or the row mean
    with ``row_mean``), then rotated back and cropped when the weight was rotated."""
    _, _, s, z = runtime_params(raw, bits)[0]
    deq = codes.float() * s + z
    if mask is not None:
        deq = deq * mask
    if grid.dc:
        deq = torch.cat([offset.float()[:, None], deq], 1)
    elif row_mean:
        deq = deq + offset.float()[:, None] / grid.n ** 0.5
    if rotated:
        deq = hadamard_ref(deq, -1)[:, :in_features]
    return deq[None]


def build_runtime(pm: PackedModel) -> nn.Module:
    """Swap the plan's sites of an FP skeleton for packed modules and load the FP tensors."""
    model = build(pm.arch, pm.model_cfg)
    plan = plan_for(model, pm.quant.layers)
    cfg = pm.quant
    rotate = cfg.rotation == "deploy"
    q = 0
    weights = {}
    for grid, codes, mask, dc in zip(pm.grids, pm.codes, pm.masks, pm.dc):
        if grid.weight_only:
            in_f = getattr(model.get_submodule(grid.path), grid.param).shape[-1]
            weights[grid.key] = dequantized_weight(grid, codes, mask, dc, pm.qparams[q:q + 1], cfg.bits, rotate,
                                                   cfg.row_mean, in_f)
            q += 1
            continue
        fp = model.get_submodule(grid.path)
        w_raw, a_raw = pm.qparams[q:q + grid.splits], pm.qparams[q + grid.splits:q + 2 * grid.splits]
        q += 2 * grid.splits
        model.set_submodule(grid.path, PackedLinear(fp.in_features, grid.n, codes, mask, dc, w_raw, a_raw,
                                                    pm.fp[f"{grid.path}.bias"], cfg.bits, rotate, cfg.row_mean))
    for site in plan.attentions:
        model.set_submodule(site.path, PackedAttend(pm.qparams[q:q + 4], cfg.bits, bool(pm.grids[0].dc), rotate,
                                                    cfg.row_mean))
        q += 4
    folded = {f"{g.path}.bias" for g in pm.grids if not g.weight_only}   # inside each PackedLinear's epilogue
    model.load_state_dict({**{k: v.float() for k, v in pm.fp.items() if k not in folded}, **weights}, strict=True)
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


def load_packed(path: Path, scale: int | None = None, device: str | torch.device = "cpu",
                arch: str | None = None) -> nn.Module:
    """The integer runtime of a packed file, on ``device``.

    Raises:
        CompsrtError: a damaged or malformed file, or one of another scale than ``scale`` or
            another architecture than ``arch`` (None: any).
    """
    pm = read_packed(Path(path))
    check_asked(path, "packed model", pm.arch, pm.model_cfg.scale, arch, scale)
    model = build_runtime(pm).to(device)
    if torch.device(device).type == "cuda":
        why = use_cuda_kernels(model)
        if why:
            print(f"compsrt: packed linears use torch._int_mm on CUDA (csrc kernel unavailable: {why})",
                  file=sys.stderr)
    return model
